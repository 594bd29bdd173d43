import sys

from services.membership.main import main

main(sys.argv[1:])
