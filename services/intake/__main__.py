import sys

from services.intake.main import main

main(sys.argv[1:])
