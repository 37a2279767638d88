"""`python tests/run_without.py MODULE (-m PACKAGE | SCRIPT) ARGS...`: a command line run as if MODULE were not
installed (`import MODULE` raises ModuleNotFoundError), for the tests of the optional dependencies' messages."""
import os
import runpy
import sys
from pathlib import Path

blocked, *command = sys.argv[1:]
sys.modules[blocked] = None  # how Python marks a module that cannot be imported
if command[0] == "-m":
    sys.argv = [command[1], *command[2:]]
    sys.path[0] = os.getcwd()  # as `python -m` has it
    runpy.run_module(command[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = command
    sys.path[0] = str(Path(command[0]).resolve().parent)  # as `python SCRIPT` has it
    runpy.run_path(command[0], run_name="__main__")
