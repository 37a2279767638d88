import sys

from .cli import main

if __name__ == "__main__":
    sys.argv[0] = "python -m msvit.maps"  # what --help's usage line names, rather than __main__.py
    main()
