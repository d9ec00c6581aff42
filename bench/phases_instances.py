"""Wall time of check_libvirt_instances' phases in one run, without a profiler's overhead.

    NOVA_LIBVIRT_CHECKS_STATE_DIR=... python bench/phases_instances.py CHECK-ARGS...

Wraps the check's own functions (names as in lib/nova_libvirt_checks at the time of writing;
a missing one is skipped) with timers, runs the check, prints the plugin output's first line
and the phases (ms) on stderr. Nested phases are included in their callers (_perfdata in
evaluate).
"""
import os
import sys
import time

T0 = time.perf_counter()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "lib"))
from nova_libvirt_checks import domstats, instances, plugin, state  # noqa: E402

spent = {"import": time.perf_counter() - T0}
for owner, name in ((instances, "open_connection"), (state.StateFile, "load"),
                    (domstats.Sampler, "_bulk"), (domstats.Sampler, "_complete"), (domstats.Sampler, "_per_domain"),
                    (instances, "_instance"), (instances, "rates"), (instances, "evaluate"),
                    (instances, "_perfdata"), (instances, "_save")):
    function = getattr(owner, name, None)
    if function is None:
        continue

    def timed(*args, _function=function, _name=name, **kwargs):
        started = time.perf_counter()
        try:
            return _function(*args, **kwargs)
        finally:
            spent[_name] = spent.get(_name, 0) + time.perf_counter() - started
    setattr(owner, name, timed)


def emit(text, code):
    spent["total"] = time.perf_counter() - T0
    print(text.splitlines()[0][:160])
    for name, seconds in spent.items():
        print(f"  {name:16s} {seconds * 1000:8.1f} ms", file=sys.stderr)
    sys.stdout.flush()
    os._exit(code)


plugin.emit = emit
sys.argv = ["check_libvirt_instances"] + sys.argv[1:]
instances.main()
