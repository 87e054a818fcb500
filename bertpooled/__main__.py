from bertpooled.cli import main

main()
