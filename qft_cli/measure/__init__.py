"""Matrix norms (the Krylov/Gram core), weights, hidden states, attention, fits, and the workflows that run them."""
