"""Memory at real sizes (issue 17): ``ronan profile`` of the Stable Diffusion VAE decoder at
512x512 on CPU, with its peak resident memory.

Builds a diffusers ``AutoencoderKL`` with the SD VAE configuration (83.7 M parameters,
random weights from ``torch.manual_seed(0)``), converts it with ``ronan convert`` to a model
at 512x512 and runs, as a child process::

    ronan profile --model MODEL --reference none --samples 3 --steps 2 --restarts 1

while watching it: the child's peak RSS (``VmHWM`` of ``/proc/PID/status``, polled) and the host's ``MemAvailable``; the child is killed
if MemAvailable falls under ``--floor-gib`` (other jobs share the machine). Everything is
written under ``--work`` (default a folder in /tmp), never into the repository. Prints one
JSON object: exit code, wall time, peak RSS, the ``Memory:`` line of the profile command
(the call size it chose) and the lowest MemAvailable seen. ``--analysis`` prints instead
the compiled step's memory at one and two images with the decoder's remat off and on.

    python -m benchmarks.memory_sd_vae [--work DIR] [--floor-gib 4] [--analysis]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "sample_size": 512,
}
PROFILE_ARGS = ("--reference", "none", "--samples", "3", "--steps", "2", "--restarts", "1")


def save_random_sd_vae(folder: Path, seed: int = 0) -> int:
    """Write a random-weight SD-configured ``AutoencoderKL`` (``save_pretrained``) to
    ``folder``; returns its parameter count."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**SD_VAE)
    vae.save_pretrained(folder)
    return sum(p.numel() for p in vae.parameters())


def proc_status_kib(pid: int, field: str) -> int | None:
    """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM), None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name == field:
                    return int(value.split()[0])
    except (OSError, ValueError):
        return None
    return None


def mem_available_kib() -> int:
    """The host's MemAvailable in KiB."""
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise OSError("no MemAvailable in /proc/meminfo")


def watch(cmd: list[str], floor_kib: int, cwd: Path, poll_s: float = 0.5) -> dict[str, Any]:
    """Run ``cmd`` in ``cwd``; its exit code, wall time, peak RSS (KiB), the lowest
    MemAvailable seen (KiB), its stderr and whether it was killed for MemAvailable under
    ``floor_kib``."""
    t0 = time.perf_counter()
    env = {**os.environ, "COLUMNS": "1000"}  # one line per message in the captured stderr
    with tempfile.TemporaryFile() as err:
        with tempfile.TemporaryFile() as out_file:
            child = subprocess.Popen(cmd, stdout=out_file, stderr=err, cwd=cwd, env=env)
            peak, low, killed = 0, mem_available_kib(), False
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # this child's own rusage
                if pid:
                    break
                peak = max(peak, proc_status_kib(child.pid, "VmHWM") or 0)
                low = min(low, mem_available_kib())
                if low < floor_kib and not killed:
                    child.kill()
                    killed = True
                time.sleep(poll_s)
            child.returncode = os.waitstatus_to_exitcode(status)
            out_file.seek(0)
            out = out_file.read().decode(errors="replace")
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    wall = time.perf_counter() - t0
    # The polled VmHWM, not rusage's maxrss: a child started by vfork (Python's subprocess)
    # inherits the parent's high-water mark at exec, so ru_maxrss counts this process too.
    # It stands in only for a child that ended before the first look.
    peak = peak or usage.ru_maxrss  # KiB on Linux
    return {"returncode": child.returncode, "wall_s": round(wall, 1), "peak_rss_kib": peak,
            "min_mem_available_kib": low, "killed_for_memory": killed, "stdout": out,
            "stderr_tail": stderr[-2000:]}


def compiled_figures(model_dir: Path, images: tuple[int, ...] = (1, 2)) -> dict[str, float]:
    """GiB one inversion call of the profile's settings needs (the compiled step's memory
    analysis, :func:`ronan_jax.engine.memory.call_bytes`) at 512x512, for ``images`` images,
    with the decoder's remat off and on."""
    import dataclasses

    from ronan_jax.attribution.presets import get_preset
    from ronan_jax.engine.memory import call_bytes
    from ronan_jax.models import sd_vae
    from ronan_jax.models.checkpoint import load_generator

    gen = load_generator(model_dir)
    config = get_preset("paper").config(steps=2, restarts=1)
    base = sd_vae.SDVAEConfig(**gen.info["config"])
    out = {}
    for remat in (False, True):
        g = sd_vae.make_generator(dataclasses.replace(base, remat=remat), gen.params, name=gen.name)
        for n in images:
            out[f"remat={remat} images={n}"] = round(call_bytes(g, config, n) / 2**30, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ronan-sd-vae-512")
    parser.add_argument("--floor-gib", type=float, default=4.0,
                        help="kill the profile if the host's MemAvailable falls under this")
    parser.add_argument("--cpu", default="0", help="taskset CPU list of the profile (shared machine)")
    parser.add_argument("--analysis", action="store_true",
                        help="print the compiled step's memory with and without remat instead")
    args = parser.parse_args(argv)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    src, model = work / "diffusers-vae", work / "model"
    params = None
    if not (src / "config.json").is_file():
        params = save_random_sd_vae(src)
    if not (model / "model_card.json").is_file():
        subprocess.run(["ronan", "convert", str(src), "-o", str(model)], check=True)
    if args.analysis:
        print(json.dumps({"compiled_call_gib": compiled_figures(model)}, indent=2))
        return 0
    for stale in work.glob("profile-*"):
        stale.unlink()  # measure the whole build, not a resumed one
    cmd = ["ronan", "profile", "--model", str(model), *PROFILE_ARGS]  # writes into work/
    if args.cpu:
        cmd = ["taskset", "-c", args.cpu, *cmd]
    before = mem_available_kib()
    result = watch(cmd, int(args.floor_gib * 2**20), work)
    memory_line = [line for line in result["stderr_tail"].splitlines() if line.startswith("Memory:")]
    report = {
        "command": " ".join(["ronan", "profile", "--model", "MODEL", *PROFILE_ARGS]),
        "parameters": params,
        "mem_available_before_gib": round(before / 2**20, 2),
        "peak_rss_gib": round(result["peak_rss_kib"] / 2**20, 2),
        "min_mem_available_gib": round(result["min_mem_available_kib"] / 2**20, 2),
        "memory_line": memory_line[0] if memory_line else None,
        "load_average": os.getloadavg(),
        **{k: result[k] for k in ("returncode", "wall_s", "killed_for_memory", "stdout")},
    }
    if result["returncode"] != 0:
        report["stderr_tail"] = result["stderr_tail"]
    print(json.dumps(report, indent=2))
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
