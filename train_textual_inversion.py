"""Root shim so `python train_textual_inversion.py …` and `accelerate launch train_textual_inversion.py …` work (kohya-compat)."""

from sd_train.train_textual_inversion import main

if __name__ == "__main__":
    main()
