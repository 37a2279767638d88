"""`python -m msvit.bench`: the benchmark's command line (`cli.main`)."""
from .cli import main

if __name__ == "__main__":
    main()
