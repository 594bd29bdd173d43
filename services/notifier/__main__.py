import sys

from services.notifier.main import main

main(sys.argv[1:])
