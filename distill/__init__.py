"""distill: train lightweight dermoscopy students (scratch, Hinton KD, SSD-KD, UDCD)."""
