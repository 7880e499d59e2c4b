// Runs each tests/lua/*.lua as a ruleset; the script reports via test_done().
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "engine_fixture.hpp"

namespace rs::ruleset::testing {
namespace {

std::filesystem::path lua_dir() {
  return std::filesystem::path(__FILE__).parent_path() / ".." / ".." / "lua";
}

std::vector<std::string> scripts() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(lua_dir())) {
    if (e.path().extension() == ".lua") out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

class LuaScriptTest : public EngineTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(LuaScriptTest, Passes) {
  make();
  std::string err;
  ASSERT_TRUE(engine_->load_file((lua_dir() / GetParam()).string(), &err)) << err;
  ASSERT_TRUE(run_until([&] { return host_.done; }, 30)) << "no test_done() from " << GetParam();
  EXPECT_TRUE(host_.done_ok) << host_.done_msg;
  run_for(0.05);  // let finished routines settle
  EXPECT_EQ(engine_->pending_awaits(), 0u);
}

TEST(LuaScripts, Exist) {
  EXPECT_GE(scripts().size(), 2u);
}

INSTANTIATE_TEST_SUITE_P(Scripts, LuaScriptTest, ::testing::ValuesIn(scripts()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param.substr(0, info.param.find('.'));
                           std::replace_if(
                               name.begin(), name.end(), [](char c) { return !std::isalnum(c); },
                               '_');
                           return name;
                         });

}  // namespace
}  // namespace rs::ruleset::testing
