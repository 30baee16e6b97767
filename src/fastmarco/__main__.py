from fastmarco.cli import main

main()
