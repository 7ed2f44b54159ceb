"""``python -m fws``: the same as ``fws_server``."""

from fws.cli import main

if __name__ == "__main__":
    main()
