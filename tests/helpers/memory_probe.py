"""Run ``r1-lightning`` with the given arguments in this process, then print its peak resident memory
(``PEAK_RSS_BYTES <n>``): what a memory estimate is checked against."""

import sys
from pathlib import Path

from r1_lightning.cli.main import main

if __name__ == "__main__":
    main(sys.argv[1:])
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(f"PEAK_RSS_BYTES {int(line.split()[1]) * 1024}", flush=True)
