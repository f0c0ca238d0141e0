"""Cost of the rounding floor (xfdiff.floor) on bench_compare's 12-layer d=768 Llama, seq 128.

The floor runs only for rows out of the plain tolerance. A correct port has
none at the default tolerance; a tolerance far below fp32 rounding
(``atol = rtol = 1e-9``) puts nearly every row out of it, the worst case.

    python benchmarks/bench_floor.py

Writes benchmarks/results/floor_llama12.json.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _pairs import environment, hf_pair, llama_config, token_ids, write_result  # noqa: E402


def main() -> None:
    import xfdiff

    warnings.simplefilter("ignore")
    cfg = llama_config()
    pt, fx = hf_pair(cfg)
    ids = token_ids(cfg, 128)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    xfdiff.compare(pt, fx, inputs, progress=False)  # warm
    out = {"environment": environment(), "runs": {}}
    for name, tol in (("default tolerance", None), ("atol=rtol=1e-9 (worst case)", 1e-9)):
        t0 = time.perf_counter()
        r = xfdiff.compare(pt, fx, inputs, tolerance=tol, progress=False)
        total = time.perf_counter() - t0
        fl = r.meta.get("floor", {})
        out["runs"][name] = {
            "compare_s": round(total, 2),
            "floor_s": fl.get("seconds"),
            "rows": len(r.layers),
            "rows_floor_measured": fl.get("rows_measured"),
            "rows_within_floor": fl.get("rows_within_floor"),
            "verdict": r.verdict,
            "reason": r.verdict_reason,
        }
        print(name, out["runs"][name], flush=True)
    write_result("floor_llama12", out)


if __name__ == "__main__":
    main()
