import sys

from services.cli import main

sys.exit(main(["admin", *sys.argv[1:]]))
