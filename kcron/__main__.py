from kcron.cli import main

main()
