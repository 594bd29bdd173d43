import sys

from services.training.main import main

main(sys.argv[1:])
