"""Build the pyipc C core as the cffi extension ``pyipc._core``.

Out-of-line API mode: cffi compiles a small C wrapper together with our
sources, so every call is a direct C call checked by the compiler.  The cdef
is read from the same headers that the ``.c`` files include, so what cffi
believes and what the compiler checks can never drift apart.
"""
import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

# One header per family.  Each is valid C *and* valid cdef once the
# preprocessor lines are dropped (see cdef_text).
API_HEADERS = ["ring_api.h", "topic_api.h", "channel_api.h", "waitset_api.h"]


def cdef_text(path):
    """Return a header's declarations without preprocessor lines.

    cffi's cdef parser does not run the C preprocessor; include guards and
    #include lines are only for the C compiler, so they are stripped here.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return re.sub(r"^\s*#.*$", "", text, flags=re.MULTILINE)


ffibuilder = FFI()
for header in API_HEADERS:
    ffibuilder.cdef(cdef_text(os.path.join(HERE, header)))

# setuptools wants source paths relative to the project root.
sources = sorted(
    os.path.relpath(p, os.path.dirname(HERE)) for p in glob.glob(os.path.join(HERE, "*.c"))
)

ffibuilder.set_source(
    "pyipc._core",
    '#include "pyipc_api.h"\n',
    sources=sources,
    include_dirs=[os.path.relpath(HERE, os.path.dirname(HERE))],
    # _GNU_SOURCE for pthread_mutex_clocklock, ppoll and friends.
    define_macros=[("_GNU_SOURCE", "1")],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
