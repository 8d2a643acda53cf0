"""What a multi-worker job starts: the horovodrun / mpirun commands, the hostfile, Habana's HCL config and card
binding, the GPU pinning; all computed here without starting anything (no GPU or Gaudi on this machine)."""
import json
import os
import sys
from types import SimpleNamespace

import pytest

from effdet.config import validate
from effdet.errors import ConfigError
from effdet.hardware import setup_hardware
from effdet.hardware.gaudi import MISSING_BRIDGE, hcl_config, module_id, require_habana
from effdet.hardware.gpu import Gpu
from effdet.hardware.launch import (RUN_PY, check_mode_workers, is_this_machine, needs_launch, parse_hosts, plan_launch,
                                   worker_overrides)
from tests.conftest import compose, run_cli

RUN_DIR = "/runs/job"
LAUNCH_VARIABLES = ("HOROVOD_RANK", "HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                    "PMI_RANK", "PMIX_RANK", "HCL_CONFIG_PATH", "HOROVOD_ELASTIC")


@pytest.fixture(autouse=True)
def not_a_worker(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def hardware(*overrides):
    return compose(list(overrides)).hardware


def plan(*overrides, env=None, cores=56):
    return plan_launch(hardware(*overrides), RUN_DIR, ["trainer.batch_size=32"], python="python",
                       physical_cores=cores, env=env if env is not None else {"PATH": "/usr/bin"})


def worker_part():
    return ["python", RUN_PY, "trainer.batch_size=32", f"hydra.run.dir={RUN_DIR}", "hydra.output_subdir=null"]


def test_two_cpu_workers_are_started_by_horovodrun_with_gloo_in_the_jobs_one_output_dir():
    launch = plan("hardware.num_workers=2")
    assert launch.command == ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo"] + worker_part()
    assert launch.num_workers == 2 and launch.files == {} and launch.env == {"HOROVOD_CYCLE_TIME": "20"}


def test_several_hosts_with_horovodrun():
    launch = plan("hardware.num_workers=2", "hardware.hosts=[node1:4,node2]")
    assert launch.command[:6] == ["horovodrun", "-np", "6", "-H", "node1:4,node2:2", "--gloo"]


def test_mpirun_passes_horovods_tuning_variables_on_to_every_worker():
    launch = plan("hardware.num_workers=2", "hardware.launcher=mpirun",
                  env={"HOROVOD_CYCLE_TIME": "20", "HOROVOD_FUSION_THRESHOLD": "0", "HOME": "/root"})
    forwarded = [launch.command[i + 1] for i, arg in enumerate(launch.command) if arg == "-x"]
    assert forwarded == ["HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD"]


def test_cpu_workers_get_a_20_ms_horovod_cycle_unless_the_user_chose_one_and_accelerators_keep_horovods():
    assert plan("hardware.num_workers=2").env == {"HOROVOD_CYCLE_TIME": "20"}
    assert plan("hardware.num_workers=2", "hardware.horovod_cycle_time_ms=2.5").env == {"HOROVOD_CYCLE_TIME": "2.5"}
    assert plan("hardware.num_workers=2", env={"HOROVOD_CYCLE_TIME": "5"}).env == {}  # the user's variable wins
    assert plan("hardware.num_workers=2", "hardware.horovod_cycle_time_ms=null").env == {}
    for device in ("gpu", "hls1", "hls1h"):
        assert "HOROVOD_CYCLE_TIME" not in plan(f"hardware={device}", "hardware.num_workers=2").env
    mpirun = plan("hardware.num_workers=2", "hardware.launcher=mpirun").command
    assert mpirun[mpirun.index("HOROVOD_CYCLE_TIME") - 1] == "-x"
    with pytest.raises(ConfigError, match="horovod_cycle_time_ms=0.0 is too small"):
        validate(compose(["hardware.horovod_cycle_time_ms=0"]))


def test_a_worker_sets_its_horovod_cycle_before_horovod_starts_even_when_launched_from_outside(monkeypatch):
    """An outside `mpirun python run.py` passes no variable of ours: the worker's own hardware setup sets it,
    before init_workers() starts Horovod (which reads it once)."""
    monkeypatch.setenv("HOROVOD_CYCLE_TIME", "")  # so that the value the worker sets is undone after the test
    monkeypatch.delenv("HOROVOD_CYCLE_TIME")
    setup_hardware(hardware())
    assert "HOROVOD_CYCLE_TIME" not in os.environ  # one process, no Horovod: nothing to tune, nothing inherited
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    setup_hardware(hardware())
    assert os.environ["HOROVOD_CYCLE_TIME"] == "20"
    monkeypatch.setenv("HOROVOD_CYCLE_TIME", "3")
    setup_hardware(hardware("hardware.horovod_cycle_time_ms=40"))
    assert os.environ["HOROVOD_CYCLE_TIME"] == "3"


def test_hls1_is_the_mpirun_command_of_habanas_launcher_with_an_hcl_config_for_eight_cards():
    launch = plan("hardware=hls1", "hardware.dry_run=true", env={"PATH": "/usr/bin", "PYTHONPATH": "/code"})
    hostfile, hcl_path = os.path.join(RUN_DIR, "hostfile"), os.path.join(RUN_DIR, "hcl_config.json")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    assert launch.command == (["mpirun"] + root + ["--tag-output", "--bind-to", "core", "--map-by", "socket:PE=7",
                                                   "-np", "8", "--hostfile", hostfile,
                                                   "-x", "HCL_CONFIG_PATH", "-x", "PATH", "-x", "PYTHONPATH"]
                              + worker_part())  # hardware.dry_run is not passed on: the workers would do nothing
    assert launch.files[hostfile] == "localhost slots=8\n"
    assert json.loads(launch.files[hcl_path]) == {"HCL_PORT": 5332, "HCL_TYPE": "HLS1", "HCL_COUNT": 8}
    assert launch.env == {"HCL_CONFIG_PATH": hcl_path}


def test_two_hls1h_servers_list_every_ranks_host_ip_in_the_hcl_config():
    launch = plan("hardware=hls1h", "hardware.hosts=[10.0.0.1,10.0.0.2]", "hardware.hcl_port=6000", cores=40)
    assert launch.num_workers == 8
    assert "socket:PE=10" in launch.command and launch.command[launch.command.index("-np") + 1] == "8"
    assert launch.files[os.path.join(RUN_DIR, "hostfile")] == "10.0.0.1 slots=4\n10.0.0.2 slots=4\n"
    assert json.loads(launch.files[os.path.join(RUN_DIR, "hcl_config.json")]) == {
        "HCL_PORT": 6000, "HCL_TYPE": "HLS1-H", "HCL_RANKS": ["10.0.0.1"] * 4 + ["10.0.0.2"] * 4}


def test_an_exported_hcl_config_path_is_kept_and_the_hccl_api_needs_no_file():
    exported = plan("hardware=hls1", env={"HCL_CONFIG_PATH": "/etc/hcl.json"})
    assert exported.env == {} and not any(path.endswith("hcl_config.json") for path in exported.files)
    assert exported.command[exported.command.index("HCL_CONFIG_PATH") - 1] == "-x"  # passed on to every rank
    hccl = plan("hardware=hls1", "hardware.hccl=true")
    assert hccl.env == {} and "HCL_CONFIG_PATH" not in hccl.command


def test_habana_card_binding():
    assert [module_id("hls1h", rank) for rank in range(4)] == [3, 0, 2, 1]
    assert [module_id("hls1", rank) for rank in range(8)] == list(range(8))
    with pytest.raises(ConfigError, match="has 4"):
        module_id("hls1h", 4)
    with pytest.raises(ConfigError, match="8 cards"):
        plan("hardware=hls1", "hardware.hosts=[a:9]")
    assert hcl_config("hls1", ["10.0.0.5"] * 3, 5332) == {"HCL_PORT": 5332, "HCL_TYPE": "HLS1", "HCL_COUNT": 3}


def test_bad_hosts_and_launchers_are_refused_with_what_would_be_valid():
    with pytest.raises(ConfigError, match="'node1:x' is not a host.*name:workers"):
        parse_hosts(["node1:x"], 1)
    with pytest.raises(ConfigError, match="mode=infer runs in one process.*hardware.num_workers=1"):
        check_mode_workers("infer", hardware("hardware.num_workers=2"))
    check_mode_workers("eval", hardware("hardware.num_workers=2"))
    with pytest.raises(ConfigError, match="launcher=none cannot start 2 workers"):
        plan("hardware.num_workers=2", "hardware.launcher=none")
    assert parse_hosts([], 3) == [("localhost", 3)]


def test_a_process_started_by_a_launcher_does_not_launch_again_and_ranks_above_0_write_nothing(monkeypatch):
    two = hardware("hardware.num_workers=2")
    assert needs_launch(two) and not needs_launch(hardware()) and not needs_launch(
        hardware("hardware.num_workers=2", "hardware.launcher=none"))
    assert worker_overrides([]) == []
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")  # mpirun -np 8 python run.py ...: rank 0 is a normal job
    assert not needs_launch(two) and worker_overrides([]) == []
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    extra = worker_overrides(["trainer.batch_size=4", "hydra.run.dir=/runs/job"])
    assert extra == ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
                     "hydra.job_logging.root.level=WARNING"]  # the launcher's run dir is kept
    assert worker_overrides([])[-1].startswith("hydra.run.dir=")  # a scratch dir until rank 0's is known


class FakeDevices:
    """tf.config's device API, for a machine with `count` GPUs."""

    def __init__(self, count):
        self.gpus = [SimpleNamespace(name=f"/physical_device:GPU:{i}") for i in range(count)]
        self.visible, self.growing = None, []
        self.experimental = SimpleNamespace(set_memory_growth=lambda device, on: self.growing.append((device, on)))

    def list_physical_devices(self, kind):
        return self.gpus if kind == "GPU" else []

    def set_visible_devices(self, devices, kind):
        self.visible = (devices, kind)


def test_each_gpu_worker_sees_only_its_local_ranks_gpu_and_grows_its_memory(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "2")
    devices = FakeDevices(4)
    assert Gpu().setup(hardware("hardware=gpu"), config=devices).device == "gpu:2"
    assert devices.visible == ([devices.gpus[2]], "GPU") and devices.growing == [(devices.gpus[2], True)]
    with pytest.raises(ConfigError, match="local rank 2 has no GPU of its own: this host has 2"):
        Gpu().setup(hardware("hardware=gpu"), config=FakeDevices(2))
    with pytest.raises(ConfigError, match="sees no GPU.*hardware=cpu"):
        Gpu().setup(hardware("hardware=gpu"), config=FakeDevices(0))


def test_gpu_and_gaudi_defaults_for_precision_and_xla_reach_the_trainer():
    assert (compose(["hardware=gpu"]).trainer.precision, compose(["hardware=gpu"]).trainer.xla) == (
        "mixed_float16", True)
    assert compose(["hardware=hls1h"]).trainer.precision == "mixed_bfloat16"
    assert compose(["hardware=gpu", "trainer.precision=fp32"]).trainer.precision == "fp32"


def test_without_habanas_bridge_a_gaudi_job_stops_before_any_work_and_says_what_it_needs(tmp_path):
    with pytest.raises(ConfigError, match="habana-tensorflow"):
        require_habana("hls1")
    result = run_cli("hardware=hls1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: " + MISSING_BRIDGE.format(
        name="hls1", reason="No module named 'habana_frameworks'")  # one message, no traceback
    assert not (tmp_path / "run" / "checkpoints").exists()

    dry = run_cli("hardware=hls1h", "hardware.dry_run=true", "hardware.hosts=[10.0.0.1,10.0.0.2]",
                  f"hydra.run.dir={tmp_path / 'dry'}", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "This job would run 8 workers" in dry.stdout and "mpirun" in dry.stdout and '"HCL_RANKS"' in dry.stdout
    assert sys.executable in dry.stdout
    assert not (tmp_path / "dry" / "hostfile").exists() and not (tmp_path / "dry" / "hcl_config.json").exists()


def test_an_elastic_job_is_started_by_horovodrun_in_elastic_mode_without_horovods_response_cache():
    launch = plan("hardware.elastic=true", "hardware.hosts=[node1:2,node2:2]", "hardware.min_workers=2",
                  "hardware.max_workers=6")
    assert launch.command == ["horovodrun", "-np", "4", "--min-np", "2", "--max-np", "6", "-H", "node1:2,node2:2",
                              "--elastic-timeout", "600", "--gloo", "--gloo-timeout-seconds", "10"] + worker_part()
    assert launch.env == {"HOROVOD_CYCLE_TIME": "20", "HOROVOD_CACHE_CAPACITY": "0"}
    kept = plan("hardware.elastic=true", "hardware.hosts=[node1,node2]", env={"HOROVOD_CACHE_CAPACITY": "64"})
    assert "HOROVOD_CACHE_CAPACITY" not in kept.env  # the user's own value stays


def test_an_elastic_job_on_this_machines_names_talks_over_the_loopback_and_a_discovery_script_replaces_the_hosts(
        tmp_path):
    assert is_this_machine("localhost") and is_this_machine("127.0.0.1") and not is_this_machine("node1.invalid")
    local = plan("hardware.elastic=true", "hardware.hosts=[localhost:1,127.0.0.1:1]", "hardware.collective_timeout=5")
    assert local.command[local.command.index("--gloo") + 1:][:4] == ["--network-interface", "lo",
                                                                      "--gloo-timeout-seconds", "5"]
    script = tmp_path / "hosts.sh"
    script.write_text("#!/bin/sh\necho node1:4\n")
    script.chmod(0o755)
    launch = plan("hardware.elastic=true", f"hardware.discovery_script={script}", "hardware.num_workers=4",
                  "hardware.network_interface=eth0", "hardware.elastic_timeout=60")
    assert launch.command[:14] == ["horovodrun", "-np", "4", "--min-np", "1", "--host-discovery-script", str(script),
                                   "--elastic-timeout", "60", "--gloo", "--network-interface", "eth0",
                                   "--gloo-timeout-seconds", "10"]
    assert needs_launch(hardware("hardware.elastic=true", f"hardware.discovery_script={script}"))  # even one worker


@pytest.mark.parametrize("overrides, mode, message", [
    (["hardware.hosts=[a,b]"], "train_and_eval", None),
    (["hardware=hls1", "hardware.hosts=[a,b]"], "train",
     "cannot run on hardware=hls1: Horovod Elastic runs its collectives on Gloo, and Gaudi cards exchange gradients "
     "through HCCL, which it does not support"),
    (["hardware.hosts=[a,b]", "hardware.launcher=mpirun"], "train",
     "needs hardware.launcher=horovodrun, not mpirun: Horovod Elastic runs on Gloo"),
    (["hardware.hosts=[a,b]"], "eval", "is for training .*mode=eval does not train"),
    (["hardware.num_workers=4"], "train", "on one host cannot outlive a failure.*hardware.discovery_script"),
    (["hardware.hosts=[a,b]", "hardware.min_workers=3"], "train", "min_workers=3 is more than the 2 worker"),
    (["hardware.hosts=[a:2,b:2]", "hardware.max_workers=3"], "train", "max_workers=3 is less than the 4 worker"),
    (["hardware.hosts=[a,b]", "hardware.discovery_script=/bin/true"], "train", "both say where the workers run"),
    (["hardware.discovery_script=/nonexistent/hosts.sh"], "train", "is not an executable file"),
])
def test_what_horovod_elastic_cannot_run_is_refused_in_one_line(overrides, mode, message):
    cfg = hardware("hardware.elastic=true", *overrides)
    if message is None:
        check_mode_workers(mode, cfg)
        return
    with pytest.raises(ConfigError, match=message) as error:
        check_mode_workers(mode, cfg)
    assert "\n" not in str(error.value)


def test_an_elastic_job_is_refused_in_a_fixed_group_an_outside_launcher_started(monkeypatch):
    monkeypatch.setenv("HOROVOD_RANK", "0")
    with pytest.raises(ConfigError, match="started as a worker of a fixed group"):
        check_mode_workers("train", hardware("hardware.elastic=true", "hardware.hosts=[a,b]"))
    monkeypatch.setenv("HOROVOD_ELASTIC", "1")  # horovodrun's elastic mode started it: this is the job's worker
    check_mode_workers("train", hardware("hardware.elastic=true", "hardware.hosts=[a,b]"))


def test_an_elastic_gaudi_job_is_refused_before_it_looks_for_habanas_bridge(tmp_path):
    result = run_cli("hardware=hls1", "hardware.elastic=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: hardware.elastic=true cannot run on hardware=hls1: Horovod Elastic runs its collectives on Gloo, "
        "and Gaudi cards exchange gradients through HCCL, which it does not support"]
