import sys

from .cli import main

if __name__ == "__main__":
    sys.argv[0] = "python -m msvit.energy"  # what --help's usage line names, rather than __main__.py
    main()
