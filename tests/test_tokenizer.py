from transformers import CLIPTokenizer

from nabla.models.tokenizer import caption_words, learn_merges, write_word_tokenizer


def test_caption_words_split_like_clip():
    assert caption_words(["Grinning cat face", "flag: United States", "keycap 10"]) == [
        "0", "1", "cat", "face", "flag", "grinning", "keycap", "states", "united",
    ]


def test_known_words_are_single_tokens_and_unknown_words_fall_back(tmp_path):
    tokenizer = write_word_tokenizer(["cat", "heart", "red"], tmp_path)
    tokens = tokenizer.tokenize("red heart cat")
    assert tokens == ["red</w>", "heart</w>", "cat</w>"]
    unknown = tokenizer("zebra").input_ids
    assert all(0 <= i < len(tokenizer) for i in unknown)
    assert "".join(tokenizer.convert_ids_to_tokens(unknown[1:-1])) == "zebra</w>"


def test_every_word_of_overlapping_captions_is_one_token(tmp_path):
    # "at", "cat", "hat", "heart", "hear", "ear": shared pieces that naive merge orders break apart
    words = ["at", "cat", "hat", "heart", "hear", "ear", "earth", "the", "he"]
    tokenizer = write_word_tokenizer(words, tmp_path)
    for word in words:
        assert tokenizer.tokenize(word) == [word + "</w>"]


def test_learned_merges_are_deterministic_and_produce_vocabulary_tokens():
    words = ["red", "heart", "green", "heart", "cat"]
    merges = learn_merges(words)
    assert merges == learn_merges(list(reversed(words)))
    assert merges[0] == ("r", "e")  # the only pair in two distinct words ("red", "green") ranks first
    # 2 + 4 + 4 + 2 pair merges build the four words, and "re" serves both "red" and "green"
    assert len(merges) == 11


def test_round_trips_through_from_pretrained_with_padding(tmp_path):
    write_word_tokenizer(["cat"], tmp_path, max_length=8)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 8
    assert ids[0] == tokenizer.bos_token_id and ids[2:] == [tokenizer.eos_token_id] * 6


def test_rewriting_a_saved_tokenizer_folder_replaces_it(tmp_path):
    """Pretraining again into a prior's folder: its saved tokenizer.json must not win."""
    write_word_tokenizer(["cat", "dog"], tmp_path).save_pretrained(tmp_path)  # adds tokenizer.json
    assert (tmp_path / "tokenizer.json").exists()
    tokenizer = write_word_tokenizer(["heart", "smiling", "moon"], tmp_path)
    assert len(tokenizer.tokenize("smiling")) == 1
    assert len(CLIPTokenizer.from_pretrained(tmp_path)) == len(tokenizer)
