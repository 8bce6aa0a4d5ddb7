import sys

from services.cli import main

sys.exit(main(["replicator", *sys.argv[1:]]))
