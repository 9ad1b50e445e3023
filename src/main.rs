fn main() {
    std::process::exit(whisper_trt::cli::main());
}
