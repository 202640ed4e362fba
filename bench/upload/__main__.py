from bench.upload.run import main

main()
