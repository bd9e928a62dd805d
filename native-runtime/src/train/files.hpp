#pragma once
// Crash-safe file output for the run folder: every file is written to a temporary name,
// fsynced and renamed, so a crash or a full disk never leaves a torn file behind.
// Failures throw InputError with code "write_failed" naming the path.
#include <string>
#include <vector>

namespace lora {

void write_file_atomic(const std::string& path, const std::string& bytes);
// mkdir -p; throws write_failed.
void make_dirs(const std::string& path);
// Removes a file or a folder tree; missing is fine. Returns false on failure.
bool remove_tree(const std::string& path);
void fsync_dir(const std::string& path);
bool path_exists(const std::string& path);
bool is_dir(const std::string& path);
std::vector<std::string> list_dir(const std::string& path);  // names, empty when unreadable

}  // namespace lora
