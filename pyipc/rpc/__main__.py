"""``python -m pyipc.rpc``: see ``pyipc.rpc.command``."""
import sys

from .command import main

sys.exit(main())
