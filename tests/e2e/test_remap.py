"""The harness's remap rules (see tests/e2e/kubelet.py) on the strings they must handle."""

from tests.e2e.remap import expand_vars, remap_ports


def test_kubernetes_var_expansion() -> None:
    env = {"A": "1", "DB": "postgresql://x"}
    assert expand_vars("$(A)-$(DB)", env) == "1-postgresql://x"
    assert expand_vars("$(MISSING) $$(A)", env) == "$(MISSING) $(A)"


def test_ports_and_wildcard_hosts_are_remapped() -> None:
    argv = ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "2"]
    assert remap_ports(argv, {5000: 41234}) == [
        "mlflow", "server", "--host", "127.0.0.1", "--port", "41234", "--workers", "2",
    ]
    assert remap_ports(["--port=5000", "--host=0.0.0.0"], {5000: 7}) == ["--port=7", "--host=127.0.0.1"]
    assert remap_ports(["--bind", "0.0.0.0:5000"], {5000: 7}) == ["--bind", "127.0.0.1:7"]
    # a number that is not a port value stays
    assert remap_ports(["--workers", "5000"], {5000: 7}) == ["--workers", "5000"]
