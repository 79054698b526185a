from gemmapipe.cli.app import main

main()
