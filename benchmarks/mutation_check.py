"""Break the RL core on purpose, one bug at a time, and check that the fast test lane catches each.

    python benchmarks/mutation_check.py            # every mutation (about 1-2 minutes each on 2 cores)
    python benchmarks/mutation_check.py kl_sign    # one, by name

For each mutation the script edits one source file in place, runs ``pytest -m "not slow" -x`` (the fast
lane, stopping at the first failure), restores the file, and prints which test caught the bug. A
mutation that no test catches is a hole in the suite; the script exits 1 if there is one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> (file, exact text, replacement): each replacement is the bug a careless edit would make
MUTATIONS: dict[str, tuple[str, str, str]] = {
    "advantage_sign": (
        "r1_lightning/training/losses.py",
        "    centered = grouped - grouped.mean(dim=1, keepdim=True)\n",
        "    centered = grouped.mean(dim=1, keepdim=True) - grouped\n",
    ),
    "kl_sign": (
        "r1_lightning/training/losses.py",
        "        per_token = per_token + beta * kl\n",
        "        per_token = per_token - beta * kl\n",
    ),
    "clipping_off": (
        "r1_lightning/training/losses.py",
        "    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv\n",
        "    clipped = ratio * adv\n",
    ),
    "wrong_k3": (  # k1 (the plain log-ratio) instead of Schulman's k3
        "r1_lightning/training/losses.py",
        "    return torch.exp(log_ratio) - log_ratio - 1.0\n",
        "    return -log_ratio\n",
    ),
    "no_length_normalisation": (
        "r1_lightning/training/losses.py",
        "        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / num_sequences\n",
        "        return masked.sum(-1).sum() / num_sequences\n",
    ),
    "reference_reset_noop": (
        "r1_lightning/training/reference.py",
        "        self.reference.load_state_dict(self.policy.state_dict())\n",
        "        pass\n",
    ),
    "reward_weights_ignored": (
        "r1_lightning/rewards/registry.py",
        "            totals[i] += reward.weight * float(score)\n",
        "            totals[i] += float(score)\n",
    ),
    "temperature_ignored_in_logprobs": (
        "r1_lightning/models/logprobs.py",
        "    if temperature != 1.0:\n        logits = logits / temperature\n",
        "",
    ),
    "head_gradient_temperature_ignored": (  # the chunked and fused heads' gradient, not through z = W h / T
        "r1_lightning/models/chunked_logprobs.py",
        "    if temperature != 1.0:\n        dlogits.div_(temperature)\n",
        "",
    ),
    "graph_decode_unwritten_columns_attended": (  # the CUDA-graph step's mask lets a row see columns not yet written
        "r1_lightning/generation/graph_decode.py",
        "        future = self.column_ids[:width] > self.column  #",
        "        future = self.column_ids[:width] > self.column + 1  #",
    ),
    "fused_head_wrong_token_gradients": (  # each chunk handed the first chunk's per-token loss gradients
        "r1_lightning/models/fused_head_loss.py",
        "            g, e = token_grads(logprobs, entropy, rows)\n",
        "            g, e = token_grads(logprobs, entropy, slice(0, rows.stop - rows.start))\n",
    ),
    "logits_not_shifted": (
        "r1_lightning/generation/forward.py",
        "    ).logits[:, :-1, :]\n",
        "    ).logits[:, 1:, :]\n",
    ),
}


def run(name: str) -> tuple[bool, str, float]:
    """Apply one mutation, run the fast lane, restore. ``(caught, first failing test, seconds)``."""
    file, old, new = MUTATIONS[name]
    path = ROOT / file
    original = path.read_text()
    if original.count(old) != 1:
        raise SystemExit(f"mutation {name!r}: the text to break is not found exactly once in {file}; update it")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    try:
        path.write_text(original.replace(old, new))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:randomly", "--durations=0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        path.write_text(original)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.MULTILINE)
    return result.returncode != 0, (failed[0] if failed else ""), time.perf_counter() - started


def main(names: list[str]) -> int:
    names = names or list(MUTATIONS)
    unknown = [n for n in names if n not in MUTATIONS]
    if unknown:
        raise SystemExit(f"unknown mutations {unknown}; known: {', '.join(MUTATIONS)}")
    missed = []
    print(f"{'mutation':34} {'caught':7} {'seconds':>8}  first failing test")
    for name in names:
        caught, test, seconds = run(name)
        print(f"{name:34} {'yes' if caught else 'NO':7} {seconds:8.0f}  {test}", flush=True)
        if not caught:
            missed.append(name)
    print(f"{len(names) - len(missed)} of {len(names)} mutations caught by the fast lane")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
