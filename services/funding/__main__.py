import sys

from services.funding.main import main

main(sys.argv[1:])
