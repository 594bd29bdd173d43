import sys

from services.reform.main import main

main(sys.argv[1:])
