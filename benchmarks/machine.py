"""What the benchmarks print about the machine they ran on: its CPU model, cores and the flags that matter to the
figure (docs/benchmarks.md records them with every row). Not a benchmark itself: `make bench` runs it too, and it
prints this machine's description with every flag any benchmark looks at."""
import os
from typing import Sequence

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_tile", "amx_int8")


def cpu_description(flags_of_interest: Sequence[str] = FLAGS, label: str = "flags") -> str:
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    present = [flag for flag in flags_of_interest if flag in flags]
    return f"{model}; {len(os.sched_getaffinity(0))} cores; {label}: {', '.join(present) or 'none'}"


if __name__ == "__main__":
    print(cpu_description())
