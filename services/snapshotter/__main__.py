import sys

from services.cli import main

sys.exit(main(["snapshotter", *sys.argv[1:]]))
