"""asr.corpora importers for AN4, Common Voice, TED-LIUM 3, LJSpeech and a folder plus CSV/TSV.

Every fixture is written in the corpus's own on-disk format (folder layout, file names, metadata
headers and separators, NIST SPHERE headers, MP3 clips) and every manifest entry is checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.corpora import ljspeech as ljspeech_module
from asr.cli import main
from asr.data import read_manifest
from asr.corpora.an4 import prepare_an4
from asr.corpora.common import read_sphere_header, reason_category
from asr.corpora.commonvoice import normalize_commonvoice, prepare_commonvoice
from asr.corpora.folder import prepare_folder
from asr.corpora.ljspeech import prepare_ljspeech
from asr.corpora.speechocean762 import prepare_speechocean762
from asr.corpora.tedlium import normalize_tedlium, prepare_tedlium
from asr.text import BLANK, CharTokenizer


def _tone(seconds: float, sr: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 220.0 * np.arange(int(round(seconds * sr))) / sr)).astype(np.float32)


def write_sphere(path: Path, seconds: float, sr: int = 16000, byte_format: str = "10", coding: str = "pcm") -> Path:
    """A NIST SPHERE file as AN4 and TED-LIUM ship them: 'NIST_1A', a 1024-byte ASCII header of
    'name -type value' lines ending in 'end_head', then 16-bit PCM ('10': big-endian, '01': little)."""
    samples = np.round(_tone(seconds, sr) * 32767).astype(">i2" if byte_format == "10" else "<i2")
    header = "\n".join([
        "NIST_1A", "   1024",
        "sample_count -i %d" % len(samples), "sample_rate -i %d" % sr, "channel_count -i 1",
        f"sample_byte_format -s2 {byte_format}", "sample_n_bytes -i 2", "sample_sig_bits -i 16",
        f"sample_coding -s{len(coding)} {coding}", "database_id -s3 an4", "end_head", "",
    ]).encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.ljust(1024, b" ") + samples.tobytes())
    return path


def _wav(path: Path, seconds: float, sr: int = 16000, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), _tone(seconds, sr), sr, **kwargs)
    return path


def _text(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def _reasons(result) -> dict[str, str]:
    return {key: reason_category(reason) for key, reason in result.skipped}


def _rows(result):
    return [(u.id, u.duration, u.text, u.speaker, u.start, u.end) for u in result.kept]


# --------------------------------------------------------------------------- SPHERE


def test_sphere_header_and_libsndfile_reads_an4_style_files(tmp_path):
    path = write_sphere(tmp_path / "an251-fash-b.sph", 1.25)
    header = read_sphere_header(path)
    assert header["sample_rate"] == "16000" and header["sample_byte_format"] == "10"
    assert header["sample_count"] == "20000" and header["sample_coding"] == "pcm"
    samples, rate = soundfile.read(str(path), dtype="int16")  # big-endian PCM decoded by libsndfile
    assert rate == 16000 and len(samples) == 20000
    assert np.array_equal(samples, np.round(_tone(1.25, 16000) * 32767).astype(np.int16))
    with pytest.raises(ValueError, match="NIST_1A"):
        read_sphere_header(_wav(tmp_path / "x.wav", 0.1))


# --------------------------------------------------------------------------- AN4


@pytest.fixture
def an4(tmp_path) -> Path:
    root = tmp_path / "an4"
    _text(root / "etc" / "an4_train.transcription", [
        "<s> YES </s> (an251-fash-b)",
        "<s> RUBOUT G M E F THREE NINE </s> (an253-fash-b)",
        "<s> ENTER SIX TWO </s> (cen1-mblw-b)",
        "<s> NO </s> (cen2-mblw-b)",
        "<s> STOP </s> (cen3-mblw-b)",
        "<s> ERASE </s> (cen4-mblw-b)",
        "this line is broken",
    ])
    _text(root / "etc" / "an4_train.fileids", [
        "an4_clstk/fash/an251-fash-b", "an4_clstk/fash/an253-fash-b", "an4_clstk/mblw/cen1-mblw-b",
        "an4_clstk/mblw/cen2-mblw-b", "an4_clstk/mblw/cen3-mblw-b", "an4_clstk/mblw/cen4-mblw-b",
        "an4_clstk/mblw/cen5-mblw-b",
    ])
    wav = root / "wav" / "an4_clstk"
    write_sphere(wav / "fash" / "an251-fash-b.sph", 0.8)
    write_sphere(wav / "fash" / "an253-fash-b.sph", 2.5, byte_format="01")
    # cen1: no audio at all; cen2: only the raw archive's headerless file
    (wav / "mblw").mkdir(parents=True)
    (wav / "mblw" / "cen2-mblw-b.raw").write_bytes(b"\x00\x01" * 8000)
    write_sphere(wav / "mblw" / "cen3-mblw-b.sph", 1.0, coding="pcm,embedded-shorten-v2.00")
    write_sphere(wav / "mblw" / "cen4-mblw-b.sph", 1.5)
    _text(root / "etc" / "an4_test.transcription", ["<s> TWO SIX EIGHT FOUR FOUR ONE EIGHT </s> (cen7-fcaw-b)"])
    _text(root / "etc" / "an4_test.fileids", ["an4test_clstk/fcaw/cen7-fcaw-b"])
    write_sphere(root / "wav" / "an4test_clstk" / "fcaw" / "cen7-fcaw-b.sph", 2.0)
    return tmp_path


def test_an4_manifest_entry_by_entry(an4):
    result = prepare_an4(an4, "train", progress=False)  # the folder holding an4/ works too
    wav = an4 / "an4" / "wav" / "an4_clstk"
    assert _rows(result) == [
        ("an251-fash-b", 0.8, "yes", "fash", None, None),
        ("an253-fash-b", 2.5, "rubout g m e f three nine", "fash", None, None),
        ("cen4-mblw-b", 1.5, "erase", "mblw", None, None),
    ]
    assert [u.audio for u in result.kept] == [str(wav / "fash" / "an251-fash-b.sph"),
                                             str(wav / "fash" / "an253-fash-b.sph"),
                                             str(wav / "mblw" / "cen4-mblw-b.sph")]
    assert _reasons(result) == {
        "an4_train.transcription:7": "malformed transcription line",
        "cen1-mblw-b": "no audio file",
        "cen2-mblw-b": "headerless raw audio",
        "cen3-mblw-b": "unsupported SPHERE coding",
        "cen5-mblw-b": "no transcription line",
    }
    reasons = dict(result.skipped)
    assert "an4_sphere.tar.gz" in reasons["cen2-mblw-b"]
    assert "embedded-shorten" in reasons["cen3-mblw-b"] and "sph2pipe" in reasons["cen3-mblw-b"]

    test = prepare_an4(an4 / "an4", "test", progress=False)
    assert _rows(test) == [("cen7-fcaw-b", 2.0, "two six eight four four one eight", "fcaw", None, None)]
    assert test.skipped == []
    with pytest.raises(ValueError, match="split"):
        prepare_an4(an4, "dev")


def test_an4_without_fileids_derives_paths_from_ids(an4):
    (an4 / "an4" / "etc" / "an4_test.fileids").unlink()
    test = prepare_an4(an4, "test", progress=False)
    assert [(u.id, u.speaker) for u in test.kept] == [("cen7-fcaw-b", "fcaw")]
    assert _reasons(test) == {str(an4 / "an4" / "etc" / "an4_test.fileids"): "no fileids list"}


# --------------------------------------------------------------------------- Common Voice

CV_HEADER_NEW = ("client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender"
                 "\taccents\tvariant\tlocale\tsegment")
CV_HEADER_OLD = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"


def _mp3_supported() -> bool:
    return "MP3" in soundfile.available_formats() and "MPEG_LAYER_III" in soundfile.available_subtypes("MP3")


@pytest.fixture
def commonvoice(tmp_path) -> Path:
    if not _mp3_supported():
        pytest.skip(f"libsndfile {soundfile.__libsndfile_version__} cannot write MP3 (needs >= 1.1)")
    lang = tmp_path / "cv-corpus-17.0-2024-03-15" / "en"
    clips = lang / "clips"
    for name, seconds in [("common_voice_en_100", 1.5), ("common_voice_en_101", 2.0), ("common_voice_en_102", 1.0),
                          ("common_voice_en_103", 1.0), ("common_voice_en_104", 1.0), ("common_voice_en_200", 3.0)]:
        _wav(clips / f"{name}.mp3", seconds, sr=48000, format="MP3", subtype="MPEG_LAYER_III")

    def row(client, clip, sentence):
        return "\t".join([client, f"{clip}.mp3", "a1b2", sentence, "", "2", "0", "thirties", "male_masculine",
                          "United States English", "", "en", ""])

    _text(lang / "train.tsv", [
        CV_HEADER_NEW,
        row("c0ffee", "common_voice_en_100", 'He said "Hello," then left.'),
        row("c0ffee", "common_voice_en_101", "It’s TRÈS bien — isn't it?"),
        row("beef42", "common_voice_en_102", "Meet me at 5 o'clock."),
        row("beef42", "common_voice_en_103", "?!"),
        row("beef42", "common_voice_en_104", "“Quoted” words"),
        row("beef42", "common_voice_en_105", "This clip is missing."),
        "only\tthree\tfields",
    ])
    _text(lang / "dev.tsv", [CV_HEADER_OLD, "\t".join(
        ["d00d", "common_voice_en_200.mp3", "Dev sentence, here!", "3", "1", "", "", "", "en", ""])])
    return tmp_path / "cv-corpus-17.0-2024-03-15"


def test_commonvoice_normalization():
    assert normalize_commonvoice('He said "Hello," then left.') == "he said hello then left"
    assert normalize_commonvoice("It’s TRÈS bien — isn't it?") == "it's tres bien isn't it"
    assert normalize_commonvoice("¿Dónde está?") == "donde esta"
    assert normalize_commonvoice("Привет, мир!") == ""  # not in the English alphabet
    assert normalize_commonvoice("Привет, мир!", keep_script=True) == "привет мир"
    assert normalize_commonvoice("«Ça va», dit-elle l’Été.", keep_script=True) == "ça va dit elle l'été"
    assert normalize_commonvoice("'quoted' don't", keep_script=True) == "quoted don't"


def test_commonvoice_manifest_entry_by_entry(commonvoice):
    lang = commonvoice / "en"
    result = prepare_commonvoice(commonvoice, "train", progress=False)  # the release folder: one language inside
    assert [(u.id, u.text, u.speaker) for u in result.kept] == [
        ("common_voice_en_100", "he said hello then left", "c0ffee"),
        ("common_voice_en_101", "it's tres bien isn't it", "c0ffee"),
        ("common_voice_en_104", "quoted words", "beef42"),
    ]
    for utt, seconds in zip(result.kept, (1.5, 2.0, 1.0)):
        assert utt.duration == pytest.approx(seconds, abs=0.06)  # MP3 frames pad the end a little
        assert utt.audio == str(lang / "clips" / f"{utt.id}.mp3")
        assert utt.start is None and utt.end is None
    assert _reasons(result) == {
        "common_voice_en_102": "digits in transcript",
        "common_voice_en_103": "empty transcript",
        "common_voice_en_105": "no audio file",
        "train.tsv:8": "malformed row",
    }
    dev = prepare_commonvoice(lang, "dev", progress=False)  # an older release's columns
    assert [(u.id, u.text, u.speaker) for u in dev.kept] == [("common_voice_en_200", "dev sentence here", "d00d")]
    with pytest.raises(FileNotFoundError, match="test.tsv"):
        prepare_commonvoice(lang, "test", progress=False)


def test_commonvoice_several_languages_need_a_choice(commonvoice):
    (commonvoice / "fr").mkdir()
    _text(commonvoice / "fr" / "train.tsv", [CV_HEADER_NEW])
    with pytest.raises(ValueError, match="several languages"):
        prepare_commonvoice(commonvoice, "train", progress=False)


# --------------------------------------------------------------------------- TED-LIUM 3


@pytest.fixture
def tedlium(tmp_path) -> Path:
    root = tmp_path / "TEDLIUM_release-3"
    write_sphere(root / "data" / "sph" / "AlGore_2009.sph", 10.0, byte_format="01")
    _text(root / "data" / "stm" / "AlGore_2009.stm", [
        "AlGore_2009 1 AlGore_2009 0.00 2.50 <o,f0,male> ignore_time_segment_in_scoring",
        "AlGore_2009 1 AlGore_2009 2.50 5.25 <o,f0,male> it 's a <unk> good {NOISE} idea",
        "AlGore_2009 1 AlGore_2009 5.25 9.00 <o,f0,male> we 're here(2) today and they 've said so",
        "AlGore_2009 1 AlGore_2009 9.00 12.00 <o,f0,male> this runs past the end",
        "AlGore_2009 1 AlGore_2009 9.50 9.50 <o,f0,male> nothing",
        "AlGore_2009 1 AlGore_2009 9.20 9.90 <o,f0,male> <unk>",
        "AlGore_2009 1 AlGore_2009 nine",
    ])
    _text(root / "data" / "stm" / "NoAudio_2010.stm", ["NoAudio_2010 1 NoAudio_2010 1.00 2.00 <o,f0,female> hello"])
    write_sphere(root / "legacy" / "dev" / "sph" / "DanBarber_2010.sph", 4.0, byte_format="01")
    _text(root / "legacy" / "dev" / "stm" / "DanBarber_2010.stm",
          ["DanBarber_2010 1 DanBarber_2010 0.50 3.75 <o,f0,male> i 'm a chef"])
    return root


def test_tedlium_normalization():
    assert normalize_tedlium("it 's a <unk> good {NOISE} idea") == "it's a good idea"
    assert normalize_tedlium("we 're here(2) today") == "we're here today"
    assert normalize_tedlium("<unk> {BREATH} <sil>") == ""


def test_tedlium_segments_entry_by_entry(tedlium):
    result = prepare_tedlium(tedlium, "train", progress=False)
    sph = str(tedlium / "data" / "sph" / "AlGore_2009.sph")
    assert _rows(result) == [
        ("AlGore_2009-0000250-0000525", 2.75, "it's a good idea", "AlGore_2009", 2.5, 5.25),
        ("AlGore_2009-0000525-0000900", 3.75, "we're here today and they've said so", "AlGore_2009", 5.25, 9.0),
    ]
    assert {u.audio for u in result.kept} == {sph}
    assert _reasons(result) == {
        "AlGore_2009-0000000-0000250": "not transcribed",
        "AlGore_2009-0000900-0001200": "segment past the end of the audio",
        "AlGore_2009-0000950-0000950": "bad segment",
        "AlGore_2009-0000920-0000990": "empty transcript",
        "AlGore_2009.stm:7": "malformed stm line",
        "NoAudio_2010-0000100-0000200": "no audio file",
    }
    dev = prepare_tedlium(tedlium.parent, "dev", progress=False)  # legacy/dev; the parent folder works too
    assert _rows(dev) == [("DanBarber_2010-0000050-0000375", 3.25, "i'm a chef", "DanBarber_2010", 0.5, 3.75)]
    with pytest.raises(FileNotFoundError, match="stm"):
        prepare_tedlium(tedlium, "test", progress=False)


def test_tedlium_segment_audio_is_cut(tedlium, tmp_path):
    from asr.data import load_utterance_audio, write_manifest

    result = prepare_tedlium(tedlium, "train", progress=False)
    write_manifest(tmp_path / "m.jsonl", result.kept)
    utt = read_manifest(tmp_path / "m.jsonl")[0]
    assert (utt.start, utt.end) == (2.5, 5.25)
    assert load_utterance_audio(utt, 16000).shape[0] == 44000


# --------------------------------------------------------------------------- LJSpeech


@pytest.fixture
def ljspeech(tmp_path) -> Path:
    root = tmp_path / "LJSpeech-1.1"
    lines = [
        "LJ001-0001|Printing, in the only sense with which we are at present concerned,|"
        "Printing, in the only sense with which we are at present concerned,",
        'LJ001-0003|"For although the Chinese took impressions|"For although the Chinese took impressions',
        "LJ001-0010|In 1869 Mr. Smith's press|In eighteen sixty-nine Mister Smith's press",
        "LJ001-0011|Raw only, 1869|",
        "LJ002-0001|no audio for this one|no audio for this one",
        "LJ002-0002|two fields only",
        "LJ050-0278|the recommendations we have here suggested|the recommendations we have here suggested",
    ]
    _text(root / "metadata.csv", lines)
    for utt_id, seconds in [("LJ001-0001", 3.0), ("LJ001-0003", 2.0), ("LJ001-0010", 2.5), ("LJ001-0011", 1.0),
                            ("LJ050-0278", 2.25)]:
        _wav(root / "wavs" / f"{utt_id}.wav", seconds, sr=22050, subtype="PCM_16")
    return root


def test_ljspeech_uses_the_normalized_column(ljspeech):
    result = prepare_ljspeech(ljspeech.parent, progress=False)
    assert _rows(result) == [
        ("LJ001-0001", 3.0, "printing in the only sense with which we are at present concerned", "LJ", None, None),
        ("LJ001-0003", 2.0, "for although the chinese took impressions", "LJ", None, None),
        ("LJ001-0010", 2.5, "in eighteen sixty nine mister smith's press", "LJ", None, None),
        ("LJ050-0278", 2.25, "the recommendations we have here suggested", "LJ", None, None),
    ]
    assert result.kept[0].audio == str(ljspeech / "wavs" / "LJ001-0001.wav")
    assert _reasons(result) == {
        "LJ001-0011": "empty transcript",
        "LJ002-0001": "no audio file",
        "metadata.csv:6": "malformed line",
    }


def test_ljspeech_held_out_split(ljspeech, monkeypatch):
    monkeypatch.setattr(ljspeech_module, "LJSPEECH_HELD_OUT", 1)
    ids = {s: [u.id for u in prepare_ljspeech(ljspeech, s, progress=False).kept] for s in ("train", "dev", "test")}
    assert ids == {"train": ["LJ001-0001", "LJ001-0003", "LJ001-0010"], "dev": [], "test": ["LJ050-0278"]}
    # dev is LJ002-0001, whose audio is missing
    assert _reasons(prepare_ljspeech(ljspeech, "dev", progress=False))["LJ002-0001"] == "no audio file"


# --------------------------------------------------------------------------- folder + CSV/TSV


def test_folder_with_csv_and_tsv(tmp_path):
    audio = tmp_path / "my_audio"
    _wav(audio / "a.wav", 1.0)
    _wav(audio / "sub" / "b.flac", 1.5, format="FLAC")
    _wav(tmp_path / "elsewhere" / "c.wav", 0.5)
    _text(tmp_path / "list.csv", [
        "file,transcript,speaker",
        'a.wav,"Hello, world!",ann',
        "sub/b.flac,Second one,bob",
        f"{tmp_path / 'elsewhere' / 'c.wav'},absolute path,bob",
        "missing.wav,gone,ann",
        "a.wav,duplicate row,ann",
        "short",
    ])
    result = prepare_folder(tmp_path / "list.csv", audio, progress=False)
    assert _rows(result) == [
        ("a", 1.0, "hello world", "ann", None, None),
        ("c", 0.5, "absolute path", "bob", None, None),
        ("sub-b", 1.5, "second one", "bob", None, None),
    ]
    assert _reasons(result) == {"list.csv:5": "no audio file", "a": "duplicate utterance id", "list.csv:7": "malformed row"}

    _text(tmp_path / "list.tsv", ["wav_name\tnote\twords", "a.wav\tx\tFirst, \"quoted\" text", "sub/b.flac\ty\t"])
    tsv = prepare_folder(tmp_path / "list.tsv", audio, path_column="wav_name", text_column="words", progress=False)
    assert [(u.id, u.text, u.speaker) for u in tsv.kept] == [("a", "first quoted text", "")]
    assert _reasons(tsv) == {"sub-b": "empty transcript"}
    with pytest.raises(ValueError, match="--path-column"):
        prepare_folder(tmp_path / "list.tsv", audio, progress=False)


# --------------------------------------------------------------------------- limits and the command line


def test_tokenizer_and_duration_limits_apply_to_every_importer(ljspeech):
    no_z = CharTokenizer([BLANK, " ", "'", *"abcdefghijklmnopqrstuvwxy"])
    result = prepare_ljspeech(ljspeech, tokenizer=no_z, max_duration=2.8, frames_per_second=25.0, progress=False)
    assert [u.id for u in result.kept] == ["LJ001-0003", "LJ001-0010", "LJ050-0278"]
    assert reason_category(dict(result.skipped)["LJ001-0001"]) == "too long"
    short = prepare_ljspeech(ljspeech, frames_per_second=5.0, progress=False)  # 2.25 s: 11 frames
    assert reason_category(dict(short.skipped)["LJ050-0278"]) == "too short for CTC"
    assert "42 labels > 11 encoder frames" in dict(short.skipped)["LJ050-0278"]


@pytest.mark.parametrize("corpus", ["an4", "tedlium", "ljspeech"])
def test_asr_prepare_prints_the_summary(corpus, an4, tedlium, ljspeech, tmp_path, capsys):
    args = {"an4": ["an4", "--corpus-dir", str(an4), "--split", "train"],
            "tedlium": ["tedlium", "--corpus-dir", str(tedlium), "--split", "train"],
            "ljspeech": ["ljspeech", "--corpus-dir", str(ljspeech)]}[corpus]
    out = tmp_path / f"{corpus}.jsonl"
    assert main(["prepare", *args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    first = printed.splitlines()[0]
    kept = read_manifest(out)
    speakers = len({u.speaker for u in kept})
    words = len({w for u in kept for w in u.text.split()})
    assert first.startswith(f"{corpus}: {len(kept)} utterances kept, ")
    assert f" hours, {speakers} speakers, vocabulary {words} words" in first
    assert "skipped by reason:" in printed
    assert main(["prepare", *args, "--out", str(out), "--strict"]) == 1


# --------------------------------------------------------------------------- speechocean762


@pytest.fixture
def speechocean762(tmp_path) -> Path:
    """speechocean762's layout (OpenSLR 101): train/ and test/ Kaldi data directories (tab-separated
    wav.scp and text, space-separated utt2spk, spk2utt, spk2age, spk2gender) whose wav.scp paths
    are relative to the corpus folder, and WAVE/SPEAKERnnnn/<utt>.wav (Opus in the shared copy)."""
    root = tmp_path / "speechocean762"
    splits = {"train": [("000010011", "0001", "WE CALL IT BEAR", 1.2), ("000010035", "0001", "ZERO THREE FIVE ONE", 0.8)],
              "test": [("000030012", "0003", "IT'S A FINE DAY", 1.0)]}
    for split, rows in splits.items():
        data = root / split
        data.mkdir(parents=True)
        for utt, spk, _, seconds in rows:
            path = root / "WAVE" / f"SPEAKER{spk}" / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, _tone(seconds, 16000), 16000)
        (data / "wav.scp").write_text("".join(f"{u}\tWAVE/SPEAKER{s}/{u}.wav\n" for u, s, _, _ in rows))
        (data / "text").write_text("".join(f"{u}\t{t}\n" for u, _, t, _ in rows))
        (data / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s, _, _ in rows))
        (data / "spk2utt").write_text(f"{rows[0][1]} {' '.join(u for u, _, _, _ in rows)}\n")
        (data / "spk2age").write_text(f"{rows[0][1]}\t10\n")
        (data / "spk2gender").write_text(f"{rows[0][1]}\tf\n")
    return root


def test_speechocean762_manifest_entry_by_entry(speechocean762, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths resolve against the corpus folder, wherever asr runs
    assert main(["prepare", "speechocean762", "--corpus-dir", str(speechocean762), "--split", "train",
                 "--out", "train.jsonl"]) == 0
    utts = read_manifest(tmp_path / "train.jsonl")
    assert [(u.id, u.text, u.speaker, u.duration) for u in utts] == [
        ("000010011", "we call it bear", "0001", 1.2), ("000010035", "zero three five one", "0001", 0.8)]
    assert all(Path(u.audio) == speechocean762 / "WAVE" / "SPEAKER0001" / f"{u.id}.wav" for u in utts)
    [test] = prepare_speechocean762(speechocean762, "test", progress=False).kept
    assert (test.id, test.text) == ("000030012", "it's a fine day")


def test_speechocean762_wrong_folder_or_split_says_what_is_expected(speechocean762):
    with pytest.raises(FileNotFoundError, match="not a speechocean762 split .*folder holding train/, test/ and WAVE/"):
        prepare_speechocean762(speechocean762 / "train", "train")
    with pytest.raises(ValueError, match="splits train and test, not 'dev'"):
        prepare_speechocean762(speechocean762, "dev")
