"""Offline checks of cluster.yaml (the `ray up` config).

No AWS credentials or network: only Ray's schema/semantic validation (the part of `ray up` that runs
before any AWS call) plus our own policy checks (ports, head runs no trials, spot workers, image pin).
"""

import copy
import ipaddress
import os
import re
import tomllib
from pathlib import Path

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import jsonschema  # noqa: E402  (core Ray dependency)
import pytest  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402  (Ray depends on packaging)
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
PYPROJECT = ROOT / "pyproject.toml"

WORLD_CIDRS = {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}
ALLOWED_WORLD_PORTS = {22}


@pytest.fixture
def cfg():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def ray_validate(config):
    validate_config(prepare_config(copy.deepcopy(config)))


def head_and_workers(config):
    types = config["available_node_types"]
    head = config["head_node_type"]
    return types[head], {name: t for name, t in types.items() if name != head}


# --------------------------------------------------------------------------------------------
# Port-rule checker
# --------------------------------------------------------------------------------------------

_RULE_KEYS = {"IpPermissions", "ingress", "Ingress", "ingress_rules", "inbound_rules", "SecurityGroupIngress"}


def _iter_rules(node):
    """Yield every ingress-like rule dict anywhere in the config."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _RULE_KEYS and isinstance(value, list):
                yield from (r for r in value if isinstance(r, dict))
            yield from _iter_rules(value)
    elif isinstance(node, list):
        for item in node:
            yield from _iter_rules(item)


def _is_world(cidr):
    try:
        net = ipaddress.ip_network(str(cidr).strip(), strict=False)
    except ValueError:
        return False
    return any(net == w for w in WORLD_CIDRS)


def _world_cidrs(rule):
    cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", []) or [] if isinstance(r, dict)]
    cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", []) or [] if isinstance(r, dict)]
    # Generic spellings (cidr / cidr_blocks / CidrIp at top level) used by other ingress formats.
    for key in ("CidrIp", "CidrIpv6", "cidr", "cidr_block", "cidr_blocks", "source_ranges", "sourceRanges"):
        v = rule.get(key)
        cidrs += v if isinstance(v, list) else [v]
    return [c for c in cidrs if c is not None and _is_world(c)]


def _port_range(rule):
    """Return (lo, hi) inclusive; all ports for protocol -1 / missing or -1 ports."""
    proto = str(rule.get("IpProtocol", rule.get("protocol", "tcp"))).lower()
    if proto in {"-1", "all"}:
        return 0, 65535
    lo = rule.get("FromPort", rule.get("from_port", rule.get("port")))
    hi = rule.get("ToPort", rule.get("to_port", lo))
    if lo is None or int(lo) == -1:
        return 0, 65535
    if hi is None or int(hi) == -1:
        hi = 65535
    return int(lo), int(hi)


def world_open_port_violations(config):
    """List of human-readable violations: any port other than 22 reachable from 0.0.0.0/0 or ::/0."""
    problems = []
    for rule in _iter_rules(config):
        world = _world_cidrs(rule)
        if not world:
            continue
        lo, hi = _port_range(rule)
        if not (lo == hi and lo in ALLOWED_WORLD_PORTS):
            problems.append(f"ports {lo}-{hi} open to {', '.join(map(str, world))}")
    return problems


def _sg_rules(config):
    return config["provider"].setdefault("security_group", {}).setdefault("IpPermissions", [])


# --------------------------------------------------------------------------------------------
# Ray's own validation
# --------------------------------------------------------------------------------------------


def test_cluster_yaml_passes_ray_validation(cfg):
    ray_validate(cfg)


def test_typo_top_level_key_is_rejected(cfg):
    bad = copy.deepcopy(cfg)
    bad["avaliable_node_types"] = bad.pop("available_node_types")
    with pytest.raises(jsonschema.ValidationError, match="Additional properties are not allowed"):
        ray_validate(bad)


def test_fractional_gpu_resource_is_rejected(cfg):
    bad = copy.deepcopy(cfg)
    _, workers = head_and_workers(bad)
    next(iter(workers.values()))["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        ray_validate(bad)


# --------------------------------------------------------------------------------------------
# Policy checks
# --------------------------------------------------------------------------------------------


def _local_ray_version():
    return re.match(r"[0-9]+\.[0-9]+\.[0-9]+", ray.__version__).group(0)


def _pyproject_ray_requirement():
    """The `ray` requirement from pyproject.toml's dependencies, or None if there is none."""
    if not PYPROJECT.exists():
        return None
    with open(PYPROJECT, "rb") as f:
        project = tomllib.load(f).get("project", {})
    for dep in project.get("dependencies", []):
        req = Requirement(dep)
        if req.name == "ray" and str(req.specifier):
            return req
    return None


def test_docker_image_pinned_to_ray_version(cfg):
    image = cfg["docker"]["image"]
    repo, _, tag = image.partition(":")
    assert repo == "rayproject/ray", f"use rayproject/ray (ray-ml is discontinued), got {repo}"
    image_version = tag.split("-")[0]
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", image_version), f"pin an exact Ray version, got {tag}"
    # `ray up`/`ray exec` from this env need the same Ray on the cluster.
    assert image_version == _local_ray_version()
    req = _pyproject_ray_requirement()
    if req is not None:
        # Exact pin (==X.Y.Z) must equal the tag; a range (>=X.Y,<X.Y+1) must contain it.
        assert req.specifier.contains(image_version), f"{image} outside pyproject's {req}"
    for node_type in cfg["available_node_types"].values():
        assert "ray-ml" not in str(node_type.get("docker", {}))


def test_head_runs_no_trials(cfg):
    head, _ = head_and_workers(cfg)
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU") == 0


def test_workers_are_autoscaling_spot_gpu(cfg):
    _, workers = head_and_workers(cfg)
    assert workers
    for name, w in workers.items():
        assert w["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
        assert w["resources"]["GPU"] >= 1, name
        assert w.get("min_workers", 0) == 0, name
        assert w["max_workers"] >= 1, name


def test_bnsweep_installed_from_synced_checkout(cfg):
    assert cfg["file_mounts"]["/home/ray/bnsweep"] == "."
    assert "pip install -e /home/ray/bnsweep" in cfg["setup_commands"]


def test_cluster_workers_get_the_local_allocator_settings(cfg):
    """The environment quiet_ray_env gives a local Ray reaches a cluster's `ray start` through the container."""
    from bnsweep.executor import quiet_ray_env

    options = cfg["docker"]["run_options"]
    saved = dict(os.environ)
    try:
        quiet_ray_env()
        for name in ("RAY_LD_PRELOAD_ON_WORKERS", "MALLOC_ARENA_MAX"):
            assert f"--env {name}={os.environ[name]}" in options, name
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_cluster_yaml_opens_only_ssh_to_world(cfg):
    assert world_open_port_violations(cfg) == []


def test_checker_flags_dashboard_open_to_world(cfg):
    bad = copy.deepcopy(cfg)
    _sg_rules(bad).append(
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    )
    assert world_open_port_violations(bad) == ["ports 8265-8265 open to 0.0.0.0/0"]
    ray_validate(bad)  # Ray's schema accepts it: only our checker catches it


def test_checker_flags_full_range_open_to_world_ipv6(cfg):
    bad = copy.deepcopy(cfg)
    _sg_rules(bad).append(
        {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    )
    assert world_open_port_violations(bad) == ["ports 0-65535 open to ::/0"]


def test_checker_flags_all_protocols_and_range_including_22(cfg):
    bad = copy.deepcopy(cfg)
    _sg_rules(bad).extend(
        [
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {"IpProtocol": "tcp", "FromPort": 20, "ToPort": 23, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        ]
    )
    assert len(world_open_port_violations(bad)) == 2


def test_checker_allows_ssh_world_and_vpc_cidr(cfg):
    ok = copy.deepcopy(cfg)
    _sg_rules(ok).extend(
        [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]},
        ]
    )
    assert world_open_port_violations(ok) == []


# --------------------------------------------------------------------------------------------
# The dashboard and Jobs API: loopback only, behind Ray's token (issue 22, item 2)
# --------------------------------------------------------------------------------------------

def _container_env(config) -> dict[str, str]:
    """The environment `docker run` gives every node's container (and so `ray start` and `ray exec`)."""
    pairs = [opt.removeprefix("--env ").partition("=") for opt in config["docker"]["run_options"]
             if opt.startswith("--env ")]
    return {name: value for name, _, value in pairs}


def test_no_rule_opens_the_dashboard_port_to_anyone(cfg):
    for rule in _iter_rules(cfg):
        lo, hi = _port_range(rule)
        assert not lo <= 8265 <= hi, f"an ingress rule opens 8265: {rule}"


def test_the_dashboard_listens_on_the_head_loopback_only(cfg):
    prepared = prepare_config(copy.deepcopy(cfg))
    start = " ".join(prepared["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", start)
    assert hosts == ["127.0.0.1"], start
    assert "0.0.0.0" not in start
    assert "--dashboard-host" not in " ".join(prepared["worker_start_ray_commands"])


def test_token_authentication_is_on_for_every_node(cfg):
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR

    env = _container_env(cfg)
    assert env.get(AUTH_MODE_ENV_VAR) == "token"  # the variable Ray 2.60 reads; not settable in system_config
    token_dir = os.path.dirname(env["RAY_AUTH_TOKEN_PATH"])
    assert token_dir in cfg["file_mounts"], "the token file must reach every node (file_mounts)"
    assert "--env RAY_AUTH_MODE=disabled" not in cfg["docker"]["run_options"]


def test_roles_are_least_privilege_in_the_comments():
    text = CLUSTER_YAML.read_text()
    assert "iam:PassRole" in text and "instance-profile/bnsweep-head" in text
    assert "instance-profile/bnsweep-worker" in text
    assert "AmazonEC2FullAccess" in text  # named as what the default role has, and not to use


# --------------------------------------------------------------------------------------------
# Packing: the paper scale's trials fit the GPU workers, four per GPU (issue 21, item 1)
# --------------------------------------------------------------------------------------------

def trials_per_gpu(worker: dict, resources: dict[str, float]) -> float:
    """How many trials asking `resources` (a sweep's, per trial) one GPU of a worker type runs at once: the fewer
    of what its CPUs and what its GPUs allow (Ray packs fractional GPUs per physical device)."""
    cpus, gpus = worker["resources"]["CPU"], worker["resources"]["GPU"]
    by_cpu = cpus / resources["cpu"] if resources["cpu"] else float("inf")
    return min(by_cpu, gpus / resources["gpu"]) / gpus


def test_the_paper_scale_runs_four_trials_per_gpu_on_the_gpu_workers(cfg):
    from bnsweep.sweep import available, load

    _, workers = head_and_workers(cfg)
    gpu_workers = {name: w for name, w in workers.items() if w["resources"].get("GPU", 0) >= 1}
    on_gpus = {name: load(name, "paper").resources for name in available()}
    on_gpus = {name: r for name, r in on_gpus.items() if r["gpu"] > 0}
    assert gpu_workers and "lr_grid" in on_gpus
    for sweep, resources in on_gpus.items():
        for name, worker in gpu_workers.items():
            per_gpu = trials_per_gpu(worker, resources)
            assert per_gpu >= 4, f"{sweep}: {per_gpu:g} trials per GPU on {name} ({resources})"
            # the CPUs a trial asks for times the trials per GPU is at most a worker's CPUs (per GPU)
            assert resources["cpu"] * (1 / resources["gpu"]) <= worker["resources"]["CPU"] / worker["resources"]["GPU"]


def test_the_packing_check_catches_the_old_g5_xlarge(cfg):
    _, workers = head_and_workers(cfg)
    worker = copy.deepcopy(next(iter(workers.values())))
    worker["resources"] = {"CPU": 4, "GPU": 1}
    assert trials_per_gpu(worker, {"cpu": 2, "gpu": 0.25}) == 2
