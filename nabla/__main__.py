from nabla.cli import main

main()
