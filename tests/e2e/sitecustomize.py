"""Test hook, loaded by every interpreter the end-to-end tests start (PYTHONPATH holds this
folder): with ACDC_TEST_STOP_AT set, the process stops dead at one chosen file operation, as a
crash or a power cut would, so tests can prove that nothing already saved is lost.

    ACDC_TEST_STOP_AT=<moment>:<file name regex>:<n>[:kill]

`moment` is `before_rename` (the temporary file is complete, the rename has not happened),
`after_rename` (the file is in place, nothing after it has run) or `mid_write` (half of the
n-th write into an open file reached it). The process exits with code 17, or dies by SIGKILL
with `:kill`. Without the variable this file does nothing.
"""

import os
import re

SPEC = os.environ.get("ACDC_TEST_STOP_AT")

if SPEC:
    import builtins
    import signal

    moment, pattern, count, *how = SPEC.split(":")
    matches = re.compile(pattern).search
    hits = {"n": 0}

    def _stop() -> None:
        if how == ["kill"]:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(17)

    def _counted(path: object) -> bool:
        if matches(os.path.basename(os.fspath(path))):
            hits["n"] += 1
            return hits["n"] == int(count)
        return False

    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if moment == "before_rename" and _counted(target):
            _stop()
        result = real_replace(source, target, *args, **kwargs)
        if moment == "after_rename" and _counted(target):
            _stop()
        return result

    os.replace = replace

    if moment == "mid_write":
        real_open = builtins.open

        class _HalfWrites:
            def __init__(self, handle):
                self._handle = handle

            def write(self, data):
                if _counted(self._handle.name):
                    self._handle.write(data[: len(data) // 2])
                    self._handle.flush()
                    _stop()
                return self._handle.write(data)

            def __getattr__(self, name):
                return getattr(self._handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._handle.__exit__(*exc)

        def open_(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            writing = any(flag in mode for flag in "wax")
            if writing and isinstance(file, (str, os.PathLike)) and matches(os.path.basename(file)):
                return _HalfWrites(handle)
            return handle

        builtins.open = open_
        import io

        io.open = open_
