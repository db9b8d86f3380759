"""DeepSparse as a peer of `inference.py`, in its own Python (DeepSparse 1.8 needs numpy < 2 and
Python <= 3.11, so it lives in a venv of its own, e.g. /work/deepsparse-venv).

`inference.py` starts this script with that venv's python and sends one JSON request per line
on stdin; each gets one JSON line back on stdout:

- {"op": "compile", "onnx": PATH, "batch": B, "cores": C}: compile the model for batch B on C
  cores (default 1); answers {"seconds": compile time}.
- {"op": "run", "onnx": PATH, "batch": B, "input": NPY, "output": NPY}: run once and save the
  output (for the agreement check); answers {}.
- {"op": "time", "onnx": PATH, "batch": B, "input": NPY, "repeats": N}: answers {"seconds":
  seconds per call over N calls}.

Any failure answers {"error": "..."}. It imports nothing of acdc_recipe.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import numpy
    from deepsparse import compile_model

    engines: dict[tuple[str, int], object] = {}
    inputs: dict[str, object] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            key = (request["onnx"], int(request["batch"]))
            if request["op"] == "compile":
                start = time.perf_counter()
                cores = int(request.get("cores", 1))
                engines[key] = compile_model(key[0], batch_size=key[1], num_cores=cores)
                answer = {"seconds": time.perf_counter() - start}
            else:
                engine = engines[key]
                if request["input"] not in inputs:
                    inputs[request["input"]] = numpy.load(request["input"])
                data = [inputs[request["input"]]]
                if request["op"] == "run":
                    numpy.save(request["output"], engine.run(data)[0])
                    answer = {}
                else:
                    repeats = int(request["repeats"])
                    start = time.perf_counter()
                    for _ in range(repeats):
                        engine.run(data)
                    answer = {"seconds": (time.perf_counter() - start) / repeats}
        except Exception as error:  # noqa: BLE001 - reported to the benchmark, which says so
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
