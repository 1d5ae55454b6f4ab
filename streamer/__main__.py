from streamer.cli import main

if __name__ == "__main__":  # not when a helper process re-imports it (multiprocessing spawn)
    main()
