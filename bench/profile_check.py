"""cProfile one run of a check: `python bench/profile_check.py checks/check_X ARGS...`.

The checks end with os._exit() (no interpreter shutdown), which would lose the profile; here
os._exit is replaced by an exception, the check's output goes to stderr, and the top functions
by cumulative time are printed (imports included: the profile starts before the first import).
"""
import cProfile
import io
import os
import pstats
import runpy
import sys


class Exited(BaseException):
    pass


def fake_exit(code):
    raise Exited(code)


script = os.path.abspath(sys.argv[1])
sys.argv = [script] + sys.argv[2:]
os._exit = fake_exit
profile = cProfile.Profile()
real_stdout, sys.stdout = sys.stdout, sys.stderr
try:
    profile.runcall(runpy.run_path, script, run_name="__main__")
except (Exited, SystemExit) as exc:
    print(f"(exit {exc.args[0] if exc.args else 0})", file=sys.stderr)
finally:
    sys.stdout.flush()
    sys.stdout = real_stdout
stream = io.StringIO()
stats = pstats.Stats(profile, stream=stream)
stats.sort_stats("cumulative").print_stats(40)
stats.sort_stats("tottime").print_stats(20)
print(stream.getvalue())
