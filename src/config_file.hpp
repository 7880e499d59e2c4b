// -c config.lua: neosocksd's configuration file. A Lua chunk that gets the
// command-line arguments after "--" as `...` and returns a table of options,
// one field per flag, with neosocksd 2026-07's names (listen, http_listen,
// forward, proxy, restapi, loglevel, timeout, ...). Its `ruleset` field (or
// _G.ruleset) may be a table: the ruleset to install; a string is a ruleset
// file, as -r. The file may be gzip-compressed.
//
// The chunk runs twice: first in a ruleset VM of its own (on a loop of its
// own), for the options, since the server's VM is made from them; then,
// when it carries a ruleset table, in the server's ruleset VM
// (ruleset_chunk()), whose ruleset is the table it returns.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config.hpp"

namespace rs {

// Reads `path` and sets the fields it names in `c`, leaving the others as they
// are. On error returns a message naming the file and the bad field; `c` may
// then be partly set.
std::optional<std::string> load_config_file(const std::string& path,
                                            const std::vector<std::string>& args, Config& c);

// A chunk for Engine::update(): runs the config file `source` (its bytes,
// already inflated) with `args` and returns its ruleset table, or
// _G.ruleset. `dir` is prepended to package.path, as load_file does for -r.
std::string ruleset_chunk(const std::string& source, const std::string& chunkname,
                          const std::string& dir, const std::vector<std::string>& args);

// The file's bytes, inflated when they are gzip; nullopt with `err` set.
std::optional<std::string> read_config_source(const std::string& path, std::string* err);

// --dump-config: `c` as a config file that gives `c` back (a ruleset table
// from a config file cannot be written out: it is named in a comment).
std::string dump_config(const Config& c);

}  // namespace rs
