-- cases.lua: the small test runner of tests/lua/*_api.lua.
--
--   local T = dofile(dir .. "lib/cases.lua")("name")
--   T.case("what", function() ... end)   -- runs inside one async routine
--   T.run()                              -- after the ruleset has loaded
--
-- The unit tests provide test_done(ok, msg); in the real binary the result
-- ends the process (os.exit 0 or 1).
return function(name)
    local T = { cases = {} }

    function T.case(what, f)
        T.cases[#T.cases + 1] = { name = what, f = f }
    end

    -- f(...) must raise an error whose text contains `pattern` (plain).
    function T.raises(pattern, f, ...)
        local ok, err = pcall(f, ...)
        assert(not ok, "expected an error matching '" .. pattern .. "'")
        assert(tostring(err):find(pattern, 1, true), "unexpected error: " .. tostring(err))
    end

    local function report(ok, msg)
        if test_done then return test_done(ok, msg) end
        print(msg)
        os.exit(ok and 0 or 1)
    end

    function T.run()
        neosocksd.async(function(ok, err)
            if ok then
                report(true, name .. ": " .. #T.cases .. " cases passed")
            else
                report(false, name .. ": " .. tostring(err))
            end
        end, function()
            await.sleep(0) -- let the ruleset finish loading
            for _, c in ipairs(T.cases) do
                local ok, err = pcall(c.f)
                if not ok then error(c.name .. ": " .. tostring(err), 0) end
            end
        end)
    end

    return T
end
