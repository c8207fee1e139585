from merklesync.cli import main

main()
