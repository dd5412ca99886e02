"""The defect classes the test suite covers, each with the tests that feed the toolkit such a defect:
`python tests/defect_classes.py` counts their collected cases (parametrized cases one by one; a
hypothesis test counts once, its generated examples are noted in tests/README.md) and prints the
table's count column. Not a test module (pytest collects only test_*.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

DEFECT_CLASSES: dict[str, list[str]] = {
    "audio files": [
        "test_audio.py::test_missing_file_raises_audio_error",
        "test_audio.py::test_zero_sample_wav_raises_audio_error",
        "test_audio.py::test_zero_byte_file_raises_audio_error",
        "test_audio.py::test_text_file_renamed_wav_raises_audio_error",
        "test_audio.py::test_directory_is_not_a_file",
        "test_audio.py::test_nan_samples_raise_audio_error",
        "test_transcribe.py::test_transcribe_files_folder_with_bad_files",
        "test_transcribe.py::test_transcribe_files_all_bad",
        "test_transcribe.py::test_transcribe_files_empty_audio_file",
        "test_cli.py::test_transcribe_reports_bad_file_and_fails",
        "test_cli.py::test_transcribe_missing_file",
        "test_cli.py::test_transcribe_too_short_audio_is_empty_with_a_warning",
        "test_reliability.py::test_arbitrary_bytes_as_audio_give_a_clear_error_or_text",
        "test_reliability.py::test_cli_names_the_bad_file_and_returns_1",
        "test_audio.py::test_unreadable_file_says_permission_denied",
    ],
    "audio rates, channels and lengths": [
        "test_audio.py::test_odd_rates_resample_to_the_right_length_and_pitch",
        "test_audio.py::test_reading_odd_rates_and_many_channels_holds_only_the_mono_result",
        "test_audio.py::test_block_by_block_resampling_equals_the_whole_input",
        "test_audio.py::test_files_are_read_block_by_block_like_a_whole_read",
        "test_audio.py::test_a_flac_of_unknown_length_reads_like_the_same_flac_with_its_length",
        "test_reliability.py::test_read_chunks_equals_slices_of_the_whole_file",
        "test_transcribe.py::test_a_flac_of_unknown_length_is_transcribed_like_the_same_flac_with_its_length",
    ],
    "silence and near-silence": [
        "test_reliability.py::test_silence_gives_empty_transcripts",
        "test_transcribe.py::test_silence_dither_and_a_noise_floor_give_no_words",
        "test_transcribe.py::test_speech_loud_enough_is_transcribed_and_long_silences_inside_a_file_are_not",
        "test_shipped_model.py::test_silence_dither_and_a_noise_floor_give_no_words",
        "test_audio.py::test_frame_levels_in_dbfs",
    ],
    "manifests and corpora": [
        "test_data.py::test_malformed_line_names_file_and_line",
        "test_data.py::test_malformed_segment_bounds_name_file_and_line",
        "test_data.py::test_missing_manifest",
        "test_data.py::test_a_text_that_is_not_a_string_is_refused_with_file_and_line",
        "test_data.py::test_a_row_without_text_is_refused_where_text_is_needed",
        "test_data.py::test_train_refuses_a_manifest_without_text_or_without_entries",
        "test_score.py::test_read_texts_refuses_a_text_that_is_not_a_string",
        "test_data.py::test_dataset_rejects_text_outside_alphabet",
        "test_prepare.py::test_librispeech_every_defect_is_skipped_with_its_reason",
        "test_prepare.py::test_librispeech_audio_without_any_transcript_file_and_duplicates",
        "test_prepare.py::test_librispeech_missing_or_empty_folder",
        "test_prepare.py::test_fsdd_bad_files_are_skipped",
        "test_prepare.py::test_fsdd_optional_ctc_check",
        "test_prepare_corpora.py::test_commonvoice_several_languages_need_a_choice",
        "test_reliability.py::test_prepare_writes_rejects_file_and_strict_fails",
        "test_reliability.py::test_prepare_rejects_truncated_flac",
        "test_kaldi.py::test_export_refuses_what_kaldi_cannot_hold",
        "test_kaldi.py::test_missing_files_are_errors",
        "test_cli.py::test_prepare_librispeech_missing_corpus_dir",
        "test_cli.py::test_prepare_librispeech_empty_corpus_dir",
        "test_score.py::test_read_texts_bad_manifest_line",
        "test_score.py::test_read_texts_missing_file",
        "test_text.py::test_encode_rejects_unknown_characters",
        "test_text.py::test_encode_error_names_all_bad_characters",
    ],
    "checkpoints and model files": [
        "test_checkpoint.py::test_every_command_refuses_a_checkpoint_that_runs_code",
        "test_checkpoint.py::test_incomplete_checkpoint_is_one_clear_error",
        "test_checkpoint.py::test_malformed_entries_and_weights_that_do_not_fit",
        "test_checkpoint.py::test_a_model_file_cannot_be_resumed_from",
        "test_checkpoint.py::test_old_checkpoints_are_refused_with_the_way_to_convert_them",
        "test_checkpoint.py::test_files_that_are_not_checkpoints_are_named_in_plain_words",
        "test_transcribe.py::test_load_model_errors",
        "test_cli.py::test_transcribe_missing_checkpoint",
        "test_export.py::test_export_max_mb_error_names_file_and_size",
        "test_export.py::test_export_refuses_to_overwrite_source",
        "test_export.py::test_export_float16_overflow_is_an_error",
        "test_export.py::test_average_mismatch_names_the_file",
        "test_export.py::test_average_needs_two_distinct_checkpoints",
        "test_export.py::test_default_model_missing_says_where_it_looked",
        "test_export.py::test_transcribe_cli_model_errors",
        "test_text.py::test_from_dict_rejects_other_types",
        "test_reliability.py::test_sigkill_anywhere_then_resume_gives_bitwise_identical_weights",
    ],
    "configs and resumed runs": [
        "test_config.py::test_missing_file",
        "test_config.py::test_unknown_section_in_file",
        "test_config.py::test_unknown_key_in_file",
        "test_config.py::test_section_must_be_a_mapping",
        "test_config.py::test_unknown_names_in_overrides",
        "test_config.py::test_malformed_overrides",
        "test_config.py::test_wrong_types_in_overrides",
        "test_config.py::test_wrong_types_in_file",
        "test_config.py::test_bool_options_reject_other_values",
        "test_config.py::test_wrong_list_values",
        "test_cli.py::test_train_unknown_override_key",
        "test_cli.py::test_train_malformed_override",
        "test_cli.py::test_train_bad_value_type",
        "test_train.py::test_bad_new_options_are_named",
        "test_data.py::test_bad_perturbation_settings_are_named",
        "test_train.py::test_resume_with_a_changed_setting_stops_naming_it",
        "test_train.py::test_resume_accepts_the_keys_safe_to_change",
        "test_train.py::test_force_resume_continues_with_the_new_values",
        "test_train.py::test_resume_with_another_model_is_one_sentence_not_a_size_mismatch_wall",
        "test_recipes.py::test_fsdd_recipe_runs_all_stages",
        "test_recipes.py::test_recipe_options_are_checked",
    ],
    "training faults": [
        "test_train.py::test_non_finite_loss_is_skipped_not_applied",
        "test_train.py::test_non_finite_loss_is_skipped_on_the_device_with_fused_adamw",
        "test_reliability.py::test_cuda_oom_splits_batch_and_gives_the_same_update",
        "test_reliability.py::test_cuda_oom_split_gradient_equals_full_batch_gradient",
        "test_reliability.py::test_cuda_oom_on_a_single_utterance_is_raised",
    ],
    "downloads and archives": [
        "test_download.py::test_checksum_mismatch_raises_and_leaves_no_file",
        "test_download.py::test_interrupted_download_resumes_with_a_range_request",
        "test_download.py::test_server_ignoring_range_restarts_from_zero",
        "test_download.py::test_part_longer_than_file_starts_over",
        "test_download.py::test_existing_file_with_wrong_checksum_is_fetched_again",
        "test_download.py::test_unreachable_url_suggests_a_local_copy",
        "test_download.py::test_http_error_is_a_download_error",
        "test_download.py::test_extract_refuses_paths_outside_the_folder",
        "test_download.py::test_extract_refuses_links_out_of_the_folder",
        "test_download.py::test_extract_damaged_archive",
        "test_download.py::test_size_check_for_files_without_checksums",
        "test_download.py::test_download_corpus_rejects_bad_requests_without_network",
        "test_recipes.py::test_librispeech_download_stage_fails_fast_without_network",
    ],
    "command line and outputs": [
        "test_cli.py::test_unknown_command_exits_2",
        "test_cli.py::test_missing_required_argument_exits_2",
        "test_cli.py::test_score_missing_hyp",
        "test_align.py::test_cli_out_dir_keeps_files_of_the_same_name_apart",
        "test_beam.py::test_unknown_decoder",
        "test_beam.py::test_gpu_beam_needs_cuda",
    ],
    "outputs already there": [
        "test_train.py::test_training_again_into_a_finished_run_is_refused_before_any_work",
        "test_train.py::test_overwrite_starts_the_run_again_from_scratch",
        "test_train.py::test_a_folder_left_by_a_failed_setup_is_no_run",
        "test_cli.py::test_transcribe_out_dir_refuses_existing_files_before_any_work",
        "test_cli.py::test_transcribe_out_dir_writes_every_format",
    ],
    "Python API inputs": [
        "test_api.py::test_bad_inputs_raise_clear_errors",
        "test_api.py::test_samples_the_model_cannot_take_as_they_are_are_refused",
        "test_api.py::test_a_bad_item_in_a_list_gets_its_error_and_the_others_their_transcripts",
    ],
    "sharded and resumed transcription": [
        "test_shards.py::test_two_ranks_merge_like_one_process_and_resume_after_a_sigkill",
        "test_shards.py::test_two_ranks_decode_a_manifest_like_one_process",
        "test_shards.py::test_transcribe_out_file_equals_stdout_and_lists_rejects",
        "test_shards.py::test_read_records_prefers_success_and_skips_a_line_cut_by_a_kill",
        "test_shards.py::test_claim_folder_discards_the_records_of_another_model",
        "test_shards.py::test_decode_rerun_skips_what_is_done_and_the_output_is_the_same",
    ],
    "HTTP requests (asr serve)": [
        "test_serve.py::test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving",
        "test_serve.py::test_wav_truncation_is_detected_from_the_header",
        "test_serve.py::test_serve_without_a_model_exits_with_a_clear_error",
        "test_serve.py::test_worker_batches_and_isolates_a_failing_request",
        "test_serve.py::test_a_full_queue_answers_503",
        "test_serve.py::test_an_oversized_chunked_upload_without_content_length_gets_413",
    ],
    "an exposed server (asr serve)": [
        "test_serve.py::test_decoded_samples_are_bounded_from_the_header_before_decoding",
        "test_serve.py::test_the_sample_limit_is_an_openai_error_from_the_server",
        "test_serve.py::test_the_api_key_is_required_as_a_bearer_token",
        "test_serve.py::test_requests_from_other_origins_are_refused_unless_allowed",
        "test_serve.py::test_a_slow_loris_connection_is_closed_with_408",
        "test_serve.py::test_a_client_hanging_up_mid_upload_is_one_log_line",
        "test_serve.py::test_the_port_is_checked_before_the_model_loads_and_exposure_without_a_key_warns",
        "test_serve.py::test_a_loopback_server_without_a_key_answers_only_its_own_host_names",
        "test_web_page.py::test_a_server_with_an_api_key_is_used_through_the_key_field",
    ],
    "pretrained encoders": [
        "test_pretrained.py::test_no_encoder_gives_a_message_saying_how_to_get_one",
        "test_pretrained.py::test_a_checkpoint_names_its_encoder_and_refuses_another",
        "test_pretrained.py::test_resuming_a_run_keeps_its_encoder",
        "test_pretrained.py::test_an_unknown_frontend_is_named_in_the_error",
        "test_pretrained.py::test_training_manifests_with_the_same_id_are_refused",
        "test_pretrained.py::test_two_encoders_whose_hashes_share_a_prefix_are_shown_apart",
    ],
}


def count(node_ids: list[str]) -> tuple[int, list[str]]:
    """(cases pytest collects for these tests, the node ids it did not find)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *(str(TESTS / n) for n in node_ids)], capture_output=True, text=True, cwd=TESTS.parent)
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    missing = [n for n in node_ids if not any(line.startswith(f"tests/{n}") for line in collected)]
    return len(collected), missing


if __name__ == "__main__":
    for name, node_ids in DEFECT_CLASSES.items():
        cases, missing = count(node_ids)
        print(f"{name}: {len(node_ids)} tests, {cases} cases" + (f"; NOT FOUND: {missing}" if missing else ""))
