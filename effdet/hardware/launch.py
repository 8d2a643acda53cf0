"""Starting a job's workers: `python run.py hardware.num_workers=N ...` becomes one horovodrun or mpirun
command that runs the same composed job N times (times the hosts), all writing into this job's one output dir.

Nothing here imports TensorFlow or Horovod: the launching process only composes, writes and waits.
"""
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from effdet.artifacts import HOSTFILE
from effdet.errors import ConfigError, EffdetError
from effdet.hardware.horovod_tuning import horovod_variables
from effdet.hardware.ranks import launched_as_elastic, launched_as_worker, rank_from_env, size_from_env
from effdet.hardware.registry import backend_of

RUN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "run.py")
MULTI_WORKER_MODES = ("train", "train_and_eval", "eval")
ELASTIC_MODES = ("train", "train_and_eval")
# What each worker needs from the launching process's environment, when it is set there (mpirun passes only
# the variables named with -x; horovodrun passes the whole environment to local workers and these over ssh),
# and Horovod's own tuning (HOROVOD_CYCLE_TIME, HOROVOD_FUSION_THRESHOLD, ...: every HOROVOD_* variable).
FORWARDED = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL",
             "CUDA_VISIBLE_DEVICES", "HCL_CONFIG_PATH", "HABANA_VISIBLE_MODULES", "MALLOC_ARENA_MAX")


@dataclass
class Launch:
    """What a launch runs: the command, the variables it sets for the workers, and the files it writes first."""

    command: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)  # path → content
    num_workers: int = 1

    def describe(self) -> str:
        lines = [f"{self.num_workers} workers:", "  " + shlex.join(self.command)]
        for name, value in sorted(self.env.items()):
            lines.append(f"  with {name}={value}")
        for path, content in self.files.items():
            lines.append(f"  file {path}:")
            lines.extend("    " + line for line in content.rstrip("\n").split("\n"))
        return "\n".join(lines)


def parse_hosts(hosts: Sequence[str], workers_per_host: int) -> List[Tuple[str, int]]:
    """`hardware.hosts` entries `name` or `name:slots` → [(name, workers)]; no hosts: this machine alone."""
    if not hosts:
        return [("localhost", workers_per_host)]
    parsed = []
    for entry in hosts:
        name, _, slots = str(entry).partition(":")
        if not name or (slots and not slots.isdigit()) or slots == "0":
            raise ConfigError(f"hardware.hosts: '{entry}' is not a host: write 'name' or 'name:workers' "
                              f"(for instance 'server1:8')")
        parsed.append((name, int(slots) if slots else workers_per_host))
    return parsed


def total_workers(hardware_cfg: Any) -> int:
    return sum(slots for _, slots in parse_hosts(hardware_cfg.hosts, hardware_cfg.num_workers))


def needs_launch(hardware_cfg: Any) -> bool:
    """Whether this process must start the workers itself: more than one is asked for (or an elastic job, which
    may grow), a launcher is chosen, and this process is not already one rank of a launch (ours, or mpirun's /
    an MPIJob's)."""
    wanted = total_workers(hardware_cfg) > 1 or hardware_cfg.elastic
    return wanted and hardware_cfg.launcher != "none" and not launched_as_worker()


def check_mode_workers(mode: str, hardware_cfg: Any) -> None:
    """Only modes that split their work over workers may have several: the others would each write the same files.
    An elastic job must be one that Horovod Elastic can run (check_elastic)."""
    count = size_from_env() if launched_as_worker() else total_workers(hardware_cfg)
    if count > 1 and mode not in MULTI_WORKER_MODES:
        raise ConfigError(f"mode={mode} runs in one process, and this job has {count} workers; use "
                          f"hardware.num_workers=1 (modes with several workers: {', '.join(MULTI_WORKER_MODES)})")
    if hardware_cfg.elastic:
        check_elastic(mode, hardware_cfg)


def check_elastic(mode: str, hardware_cfg: Any) -> None:
    """What Horovod Elastic needs, refused in one line each: Gloo through horovodrun (not MPI, not a device whose
    collectives are its own), a training mode, a number of workers within the bounds, and more than one host
    (Horovod removes a failed worker's whole host) or a discovery script."""
    problem = backend_of(hardware_cfg).elastic_problem(hardware_cfg)
    if problem:
        raise ConfigError(f"hardware.elastic=true cannot run on hardware={hardware_cfg.name}: {problem}")
    if hardware_cfg.launcher != "horovodrun":
        raise ConfigError(f"hardware.elastic=true needs hardware.launcher=horovodrun, not {hardware_cfg.launcher}: "
                          "Horovod Elastic runs on Gloo, started by horovodrun; MPI is not supported by it")
    if launched_as_worker() and not launched_as_elastic():
        raise ConfigError("hardware.elastic=true, but this process was started as a worker of a fixed group (an "
                          "outside mpirun or horovodrun without elastic); run `python run.py hardware.elastic=true "
                          "...` and let it start its workers")
    if mode not in ELASTIC_MODES:
        raise ConfigError(f"hardware.elastic=true is for training (mode={' or mode='.join(ELASTIC_MODES)}); "
                          f"mode={mode} does not train: drop hardware.elastic")
    count = total_workers(hardware_cfg)
    if hardware_cfg.min_workers > count:
        raise ConfigError(f"hardware.min_workers={hardware_cfg.min_workers} is more than the {count} worker(s) the "
                          "job starts with (hardware.num_workers, hardware.hosts)")
    if hardware_cfg.max_workers is not None and hardware_cfg.max_workers < count:
        raise ConfigError(f"hardware.max_workers={hardware_cfg.max_workers} is less than the {count} worker(s) the "
                          "job starts with (hardware.num_workers, hardware.hosts)")
    script = hardware_cfg.discovery_script
    if script:
        if hardware_cfg.hosts:
            raise ConfigError("hardware.hosts and hardware.discovery_script both say where the workers run: give "
                              "one (the script, when hosts come and go)")
        if not os.path.isfile(script) or not os.access(script, os.X_OK):
            raise ConfigError(f"hardware.discovery_script={script} is not an executable file: it must print the "
                              "available hosts, one `name:slots` a line (chmod +x it)")
    elif len(parse_hosts(hardware_cfg.hosts, hardware_cfg.num_workers)) < 2:
        raise ConfigError("hardware.elastic=true on one host cannot outlive a failure: Horovod Elastic takes a "
                          "failed worker's whole host out of the job. List two or more in hardware.hosts, or give "
                          "hardware.discovery_script")


def worker_overrides(argv: Sequence[str]) -> List[str]:
    """Hydra overrides a worker adds to its own command line, before Hydra starts: ranks other than 0 write
    nothing (no .hydra/, no log file) and print only warnings. A rank started by an outside `mpirun python
    run.py` without a hydra.run.dir gets a scratch dir for Hydra; it takes rank 0's output dir once Horovod is up."""
    if not launched_as_worker() or rank_from_env() == 0:
        return []
    extra = {"hydra.output_subdir": "null", "hydra.job_logging.root.handlers": "[console]",
             "hydra.job_logging.root.level": "WARNING",  # rank 0 reports progress; the others only problems
             "hydra.run.dir": os.path.join(tempfile.gettempdir(), "effdet-worker-scratch")}
    given = {arg.lstrip("+").partition("=")[0] for arg in argv}
    return [f"{key}={value}" for key, value in extra.items() if key not in given]


def worker_command(run_dir: str, overrides: Sequence[str], python: str = sys.executable) -> List[str]:
    """The command every worker runs: the job's own overrides, in the launching job's output dir, whose
    .hydra/ the launching process has written already."""
    kept = [item for item in overrides if item.lstrip("+").partition("=")[0] != "hardware.dry_run"]
    return [python, RUN_PY, *kept, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def plan_launch(hardware_cfg: Any, run_dir: str, overrides: Sequence[str], python: str = sys.executable,
                physical_cores: Optional[int] = None, env: Optional[Dict[str, str]] = None) -> Launch:
    """The launch of this job's workers (pure: writes nothing)."""
    env = dict(os.environ if env is None else env)
    hosts = parse_hosts(hardware_cfg.hosts, hardware_cfg.num_workers)
    count = sum(slots for _, slots in hosts)
    command = worker_command(run_dir, overrides, python)
    launch = Launch(command=[], num_workers=count)
    launch.env.update(backend_of(hardware_cfg).launch_environment(hardware_cfg, hosts, run_dir, env, launch.files))
    launch.env.update(horovod_variables(hardware_cfg, env))  # the workers set them too; here a dry run shows them
    if hardware_cfg.launcher == "mpirun":
        cores = physical_cores or count_physical_cores()
        per_worker = hardware_cfg.cores_per_worker or max(1, cores // max(slots for _, slots in hosts))
        hostfile = os.path.join(run_dir, HOSTFILE)
        launch.files[hostfile] = "".join(f"{name} slots={slots}\n" for name, slots in hosts)
        forwarded = sorted({*launch.env, *(name for name in env if name in FORWARDED or name.startswith("HOROVOD_"))})
        launch.command = (["mpirun"] + (["--allow-run-as-root"] if _is_root() else [])
                          + ["--tag-output", "--bind-to", "core", "--map-by", f"socket:PE={per_worker}",
                             "-np", str(count), "--hostfile", hostfile]
                          + [arg for name in forwarded for arg in ("-x", name)]
                          + list(hardware_cfg.launcher_args) + command)
    elif hardware_cfg.launcher == "horovodrun":
        where = ["-H", ",".join(f"{n}:{s}" for n, s in hosts)]
        if hardware_cfg.elastic:
            bounds = ["--min-np", str(hardware_cfg.min_workers)] + \
                (["--max-np", str(hardware_cfg.max_workers)] if hardware_cfg.max_workers else [])
            if hardware_cfg.discovery_script:
                where = ["--host-discovery-script", os.path.abspath(hardware_cfg.discovery_script)]
            where = bounds + where + ["--elastic-timeout", str(hardware_cfg.elastic_timeout)]
        interface = network_interface(hardware_cfg, hosts)
        timeout = ["--gloo-timeout-seconds", str(hardware_cfg.collective_timeout)] if hardware_cfg.elastic else []
        launch.command = (["horovodrun", "-np", str(count), *where, "--gloo"]
                          + (["--network-interface", interface] if interface else []) + timeout
                          + list(hardware_cfg.launcher_args) + command)
    else:
        raise ConfigError(f"hardware.launcher={hardware_cfg.launcher} cannot start {count} workers: choose "
                          "horovodrun or mpirun, or start them yourself (mpirun -np N python run.py ...)")
    return launch


def network_interface(hardware_cfg: Any, hosts: List[Tuple[str, int]]) -> Optional[str]:
    """hardware.network_interface; for an elastic job whose hosts are all this machine, the loopback (Horovod
    Elastic otherwise looks for an interface that two hosts share, and waits for a second one)."""
    if hardware_cfg.network_interface:
        return hardware_cfg.network_interface
    if hardware_cfg.elastic and not hardware_cfg.discovery_script and all(is_this_machine(h) for h, _ in hosts):
        return "lo"
    return None


def is_this_machine(host: str) -> bool:
    """Whether `host` names this machine: a loopback address, or this machine's own name or address."""
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return False
    if address.startswith("127."):
        return True
    try:
        return address in socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        return False


def launch_workers(hardware_cfg: Any, run_dir: str, overrides: Sequence[str]) -> Dict[str, Any]:
    """Writes the launch's files, runs it and waits; or, with hardware.dry_run, only prints it."""
    launch = plan_launch(hardware_cfg, run_dir, overrides)
    if hardware_cfg.dry_run:
        print("dry run (hardware.dry_run=true), nothing started. This job would run", launch.describe())
        return {"dry_run": launch}
    program = shutil.which(launch.command[0]) or _beside_python(launch.command[0])
    if program is None:
        other = "mpirun" if launch.command[0] == "horovodrun" else "horovodrun"
        raise ConfigError(f"hardware.launcher={hardware_cfg.launcher}: '{launch.command[0]}' is not installed here "
                          f"(not on PATH). Install it (`make venv` builds Horovod with horovodrun), or set "
                          f"hardware.launcher={other}")
    for path, content in launch.files.items():
        with open(path, "w") as handle:
            handle.write(content)
    print(f"starting {launch.num_workers} workers: {shlex.join(launch.command)}", flush=True)
    returncode = subprocess.run([program] + launch.command[1:], env={**os.environ, **launch.env}).returncode
    if returncode != 0:
        lost = (f" Fewer than hardware.min_workers={hardware_cfg.min_workers} were left, or they failed together; "
                "the same command resumes from the last checkpoint.") if hardware_cfg.elastic else ""
        raise EffdetError(f"the {launch.num_workers} workers ended with exit code {returncode}; their messages are "
                          f"above (rank 0's log: {run_dir}).{lost}")
    return {"workers": launch.num_workers, "returncode": returncode}


def count_physical_cores() -> int:
    """Physical cores of this machine (hyper-threads not counted), from /proc/cpuinfo where it exists."""
    try:
        with open("/proc/cpuinfo") as handle:
            cores, socket = set(), "0"
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    socket = value.strip()
                elif key.strip() == "core id":
                    cores.add((socket, value.strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _beside_python(program: str) -> Optional[str]:
    """horovodrun installed in this virtual environment, when .venv/bin is not on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), program)
    return candidate if os.access(candidate, os.X_OK) else None
