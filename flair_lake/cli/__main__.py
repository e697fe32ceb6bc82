"""``python -m flair_lake.cli``: the ``flair-lake`` command line."""

from flair_lake.cli import main

if __name__ == "__main__":
    main()
