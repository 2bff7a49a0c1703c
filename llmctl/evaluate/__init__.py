"""Testing models: perplexity on text, exact-match accuracy on question-answer sets."""
