"""What membership does with others' events (the certificate consumer comes with the membership issue)."""
