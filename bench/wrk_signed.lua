-- wrk script for bench_exchange.py: POST pre-generated bodies, each at most once.
--
--   wrk -t2 -c32 -d8s -s bench/wrk_signed.lua URL -- PREFIX CONTENT_TYPE NTHREADS MARKERS
--
-- Thread n (0-based, in setup order) reads PREFIX-n.txt: one request body per line (JWS JSON has
-- no newlines). Every request takes the next unused line, so no body is sent twice (the gateway
-- refuses replays). When a thread runs out of bodies it sends GET /healthz and stops, and the
-- summary says "exhausted" (the round is then too short to count). Responses are counted by
-- status; the first few non-2xx bodies are kept (truncated) so the caller can print them.
--
-- Start barrier: wrk loads each thread's script (init, which reads the bodies) and starts that
-- thread before loading the next one, but starts its clock only after the last one. So that the
-- first thread does not get a head start that inflates the rate, every thread writes
-- MARKERS-<id> after loading and delay() holds requests until all NTHREADS markers exist.
-- done() prints one "BENCH key=value ..." line and "BENCH_CODE"/"BENCH_SAMPLE" lines.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   local prefix = args[1]
   local ctype = args[2] or "application/jose+json"
   bodies = {}
   local f = assert(io.open(prefix .. "-" .. id .. ".txt", "rb"))
   for line in f:lines() do
      if #line > 0 then
         bodies[#bodies + 1] = line
      end
   end
   f:close()
   nbodies = #bodies
   nexti = 1
   ok = 0
   bad = 0
   exhausted = 0
   codes = {}
   codes_s = ""
   samples = ""
   nsamples = 0
   headers = { ["Content-Type"] = ctype }
   nthreads = tonumber(args[3] or "0")
   markers = args[4]
   started = (markers == nil or nthreads == 0)
   if not started then
      local m = assert(io.open(markers .. "-" .. id, "w"))
      m:write("ready\n")
      m:close()
   end
end

function delay()
   if started then
      return 0
   end
   for i = 0, nthreads - 1 do
      local m = io.open(markers .. "-" .. i, "r")
      if not m then
         return 2
      end
      m:close()
   end
   started = true
   return 0
end

function request()
   if nexti > nbodies then
      exhausted = 1
      wrk.thread:stop()
      return wrk.format("GET", "/healthz")
   end
   local body = bodies[nexti]
   bodies[nexti] = nil
   nexti = nexti + 1
   return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
      return
   end
   bad = bad + 1
   codes[status] = (codes[status] or 0) + 1
   local parts = {}
   for code, n in pairs(codes) do
      parts[#parts + 1] = code .. ":" .. n
   end
   codes_s = table.concat(parts, ",")
   if nsamples < 3 and body then
      nsamples = nsamples + 1
      samples = samples .. status .. " " .. string.sub(body:gsub("[\r\n]", " "), 1, 600) .. "\n"
   end
end

function done(summary, latency, requests)
   local tok, tbad, texh, used = 0, 0, 0, 0
   local allcodes, allsamples = {}, {}
   for _, t in ipairs(threads) do
      tok = tok + t:get("ok")
      tbad = tbad + t:get("bad")
      texh = texh + t:get("exhausted")
      used = used + t:get("nexti") - 1
      local cs = t:get("codes_s")
      if cs and #cs > 0 then
         for code, n in string.gmatch(cs, "(%d+):(%d+)") do
            allcodes[code] = (allcodes[code] or 0) + tonumber(n)
         end
      end
      local s = t:get("samples")
      if s and #s > 0 then
         allsamples[#allsamples + 1] = s
      end
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d ok=%d bad=%d duration_us=%d bytes=%d exhausted=%d used=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d " ..
      "lat_mean_us=%.1f lat_p50_us=%d lat_p90_us=%d lat_p99_us=%d lat_max_us=%d\n",
      summary.requests, tok, tbad, summary.duration, summary.bytes, texh, used,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max))
   for code, n in pairs(allcodes) do
      io.write(string.format("BENCH_CODE %s %d\n", code, n))
   end
   for _, s in ipairs(allsamples) do
      for line in string.gmatch(s, "[^\n]+") do
         io.write("BENCH_SAMPLE " .. line .. "\n")
      end
   end
end
