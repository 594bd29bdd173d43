import sys

from services.projection.main import main

main(sys.argv[1:])
