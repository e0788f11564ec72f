#!/usr/bin/env python
"""Write the project's sample sets into coati_hf/data/samples/.

Everything here was written for this project (no third-party data), so the samples are
licence-clean. The output is deterministic: rerunning the script reproduces the files.

    python tools/make_samples.py

Files:
  sft.jsonl          ColossalChat conversations {"messages": [{"from", "content"}]};
                     every other topic gets a multi-turn follow-up, every 4th row a system message.
  preferences.jsonl  ColossalChat preference pairs {"context", "chosen", "rejected"}.
                     chosen = polite opener + on-topic answer + polite closer;
                     rejected = a curt/rude/off-topic reply that always contains
                     "Whatever" or "I don't care" (English) / "不知道" or "随便" (Chinese).
                     The signal is meant to be learnable by a tiny random-init model.
  prompts.jsonl      PPO prompts in TRL's conversational prompt-only format
                     {"prompt": [{"role": "user", "content": str}]}: read as chat (a string
                     prompt would be plain text, TRL's standard format).
  pretrain.txt       a few KB of plain text in paragraphs, for the PTX loss.

Rows of each file are shuffled with a fixed seed so that any tail split is a mix of
both languages and of all templates.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "coati_hf" / "data" / "samples"
SEED = 1234

# (topic name, question 1, question 2, answer, follow-up question, follow-up answer)
EN_TOPICS = [
    ("the sky", "Why is the sky blue?", "Can you explain why the daytime sky looks blue?",
     "Sunlight contains every colour. Air molecules scatter short blue wavelengths much more strongly than long red ones, an effect called Rayleigh scattering, so blue light reaches your eyes from all directions of the sky.",
     "Why are sunsets red, then?",
     "At sunset the light crosses much more air before it reaches you. Most of the blue is scattered away on the way, so the light that remains is mostly red and orange."),
    ("photosynthesis", "What is photosynthesis?", "How do plants make their own food?",
     "Photosynthesis is the process plants use to turn light into chemical energy. Chlorophyll in the leaves captures sunlight, and the plant uses that energy to combine carbon dioxide from the air with water into glucose, releasing oxygen as a by-product.",
     "Why are most leaves green?",
     "Chlorophyll absorbs red and blue light well but reflects green light, so green is the colour that bounces back to our eyes."),
    ("prime numbers", "What is a prime number?", "How can I tell whether a number is prime?",
     "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, such as 2, 3, 5, 7 and 11. To test a number n, check whether any whole number from 2 up to the square root of n divides it evenly; if none does, n is prime.",
     "Is 1 a prime number?",
     "No. By definition a prime has exactly two distinct divisors, and 1 has only one, so it is neither prime nor composite."),
    ("boiling eggs", "How do I boil an egg?", "What is the best way to make a hard-boiled egg?",
     "Place the egg in a pot, cover it with cold water and bring it to a boil. Then lower the heat and simmer for about 6 minutes for a soft yolk or 10 minutes for a firm one. Cool it in cold water before peeling.",
     "Why do some eggs crack while boiling?",
     "Cracks usually come from a sudden change in temperature or from eggs bumping into each other. Starting in cold water and keeping the water at a gentle simmer helps prevent them."),
    ("the water cycle", "What is the water cycle?", "Could you describe how water moves around the Earth?",
     "The water cycle is the continuous movement of water on Earth. The sun evaporates water from oceans and lakes, the vapour cools and condenses into clouds, it falls as rain or snow, and it flows through rivers and groundwater back to the sea.",
     "How long does water stay in the atmosphere?",
     "On average a water molecule stays in the atmosphere for about nine days before it falls back to the surface as rain or snow."),
    ("Python lists", "What is the difference between a list and a tuple in Python?", "When should I use a tuple instead of a list in Python?",
     "A list is mutable: you can add, remove or change its items. A tuple is immutable: once created it cannot change. Use a list for a collection that grows or changes, and a tuple for a fixed group of values such as coordinates or a dictionary key.",
     "How do I add an item to a list?",
     "Use the append method, for example numbers.append(4), to add one item to the end, or extend to add several items from another list."),
    ("sleep", "How can I sleep better?", "Do you have any tips for getting a good night's sleep?",
     "Keep a regular schedule and go to bed and wake up at the same time every day. Keep your bedroom dark, quiet and cool, avoid caffeine in the afternoon, and put screens away about an hour before bed.",
     "How many hours of sleep do adults need?",
     "Most adults need seven to nine hours of sleep per night to feel rested and stay healthy."),
    ("gravity", "What is gravity?", "Why do things fall down instead of up?",
     "Gravity is the force by which masses attract one another. The Earth is so massive that it pulls everything near it toward its centre, which is why objects fall down and why the Moon stays in orbit.",
     "Would I weigh less on the Moon?",
     "Yes. The Moon's gravity is about one sixth of Earth's, so a person who weighs 60 kilograms on Earth would feel as light as about 10 kilograms there, although their mass stays the same."),
    ("compound interest", "What is compound interest?", "How does compound interest work?",
     "Compound interest means you earn interest not only on the money you deposited but also on the interest already added. For example, 100 dollars at 10 percent per year becomes 110 after one year and 121 after two, because the second year's interest is paid on 110.",
     "What is the rule of 72?",
     "The rule of 72 is a quick estimate: divide 72 by the yearly interest rate to get roughly how many years it takes for money to double. At 8 percent, that is about 9 years."),
    ("rainbows", "How do rainbows form?", "Why do we see a rainbow after the rain?",
     "A rainbow forms when sunlight enters raindrops, bends, reflects off the back of each drop and bends again as it leaves. Each colour bends by a slightly different amount, so white light spreads into a band of colours from red to violet.",
     "Why is a rainbow curved?",
     "Each colour reaches your eye from drops at a fixed angle of about 42 degrees from the point opposite the sun, and all the points at that angle form a circle, of which we usually see an arc."),
    ("recycling", "Why is recycling important?", "What are the benefits of recycling?",
     "Recycling turns used materials into new products, so fewer raw materials need to be mined or cut down. It saves energy, reduces the waste sent to landfills and lowers pollution. Recycling aluminium cans, for example, uses far less energy than making new aluminium.",
     "Can all plastics be recycled?",
     "No. Many kinds of plastic are hard to recycle. Check the number inside the recycling symbol and your local rules; types 1 and 2 are the most widely accepted."),
    ("machine learning", "What is machine learning?", "Can you explain machine learning in simple terms?",
     "Machine learning is a way of building computer programs that learn patterns from examples instead of following hand-written rules. For instance, after seeing many labelled photos, a model can learn to recognise cats in new photos it has never seen.",
     "What is overfitting?",
     "Overfitting happens when a model memorises its training examples, including their noise, and then performs poorly on new data. More data, simpler models and regularisation help prevent it."),
    ("green tea", "How do I make a good cup of green tea?", "What temperature should the water be for green tea?",
     "Use water that is hot but not boiling, about 75 to 80 degrees Celsius, and steep the leaves for one to three minutes. Boiling water and long steeping make green tea bitter.",
     "Can I reuse the tea leaves?",
     "Yes. Good loose-leaf green tea can usually be steeped two or three times; add about 30 seconds to the steeping time for each new infusion."),
    ("DNA", "What is DNA?", "What does DNA do in our bodies?",
     "DNA is the molecule that carries the genetic instructions of living things. It is a long double helix made of four bases, A, T, C and G, and the order of those bases encodes the proteins a cell can build.",
     "How much DNA do two people share?",
     "Any two people share about 99.9 percent of their DNA; the small remaining difference accounts for much of our individual variation."),
    ("cover letters", "How do I write a cover letter?", "What should a good cover letter include?",
     "Address it to a specific person if you can, and open by naming the job you are applying for. In two or three short paragraphs, connect your most relevant experience to the needs of the role, then close by thanking the reader and inviting an interview. Keep it to one page.",
     "How long should a cover letter be?",
     "Aim for three or four paragraphs, roughly 250 to 400 words, so that it fits comfortably on one page."),
    ("weather and climate", "What is the difference between weather and climate?", "Are weather and climate the same thing?",
     "Weather describes conditions over hours or days, such as today's rain or tomorrow's temperature. Climate is the average pattern of weather in a region over many years, usually thirty or more.",
     "Why is climate measured over thirty years?",
     "Thirty years is long enough to smooth out unusual individual years, so the average reflects the typical conditions of a place."),
    ("binary numbers", "How do binary numbers work?", "Can you explain the binary number system?",
     "Binary is a number system with only two digits, 0 and 1. Each position is worth twice the one to its right: 1, 2, 4, 8 and so on. So the binary number 1011 equals 8 + 0 + 2 + 1, which is 11 in decimal.",
     "Why do computers use binary?",
     "Electronic circuits can reliably tell two states apart, on and off, so storing and processing information as zeros and ones is simple and robust."),
    ("vaccines", "How do vaccines work?", "Why do vaccines protect us from disease?",
     "A vaccine shows your immune system a harmless piece or a weakened form of a germ. Your body learns to recognise it and builds memory cells, so if you meet the real germ later, your immune system can respond quickly before you get seriously ill.",
     "Why are some vaccines given more than once?",
     "Booster doses remind the immune system and strengthen its memory, because the protection from some vaccines fades over time."),
    ("bicycles", "How does a bicycle stay upright?", "Why doesn't a moving bike fall over?",
     "A moving bicycle stays up mainly because the rider keeps steering the front wheel under the centre of mass. The bike's geometry also helps: when it leans, the front wheel turns in that direction by itself, which brings it back under the rider.",
     "Why is it hard to balance when riding slowly?",
     "At low speed each steering correction moves the wheels only a little under you, so you have to make larger and quicker corrections to stay balanced."),
    ("saving money", "How can I start saving money?", "What are some simple ways to save money each month?",
     "Start by tracking what you spend for a month to see where your money goes. Then set a budget, pay yourself first by moving a fixed amount into savings on payday, and cut back on small repeated costs such as unused subscriptions.",
     "How big should an emergency fund be?",
     "A common guideline is three to six months of essential living expenses, kept in an account you can reach quickly."),
    ("the Moon", "Why does the Moon have phases?", "What causes the phases of the Moon?",
     "The Moon does not make its own light; it reflects sunlight. As it orbits the Earth over about 29.5 days, we see different portions of its sunlit half, which produces the cycle from new moon to full moon and back.",
     "Why do we always see the same side of the Moon?",
     "The Moon spins once on its axis in the same time it takes to orbit the Earth, so the same face always points toward us. This is called tidal locking."),
    ("web browsers", "What happens when I type a web address into my browser?", "How does a browser load a web page?",
     "The browser first looks up the IP address of the domain name using DNS. It then opens a connection to that server, usually secured with TLS, and sends an HTTP request. The server replies with HTML, and the browser fetches the images, styles and scripts it refers to and draws the page.",
     "What is the difference between HTTP and HTTPS?",
     "HTTPS is HTTP sent over an encrypted TLS connection, so other people on the network cannot read or change the data in transit."),
    ("exercise", "Why is regular exercise good for you?", "What are the health benefits of exercise?",
     "Regular exercise strengthens the heart and lungs, helps control weight, builds muscle and bone, and lowers the risk of diseases such as type 2 diabetes. It also improves mood and sleep.",
     "How much exercise should I do each week?",
     "Health guidelines suggest at least 150 minutes of moderate activity, such as brisk walking, each week, plus muscle-strengthening exercises on two days."),
    ("volcanoes", "How do volcanoes form?", "What makes a volcano erupt?",
     "Volcanoes form where molten rock called magma rises from deep inside the Earth, often at the edges of tectonic plates. Gas dissolved in the magma builds up pressure, and when the pressure becomes too great, magma, ash and gas burst out through the surface.",
     "What is the difference between magma and lava?",
     "They are the same molten rock: it is called magma while it is underground and lava once it reaches the surface."),
    ("learning languages", "What is the best way to learn a new language?", "How can I learn a foreign language faster?",
     "Practise a little every day rather than a lot once a week. Learn the most common words first, listen to native speakers through podcasts or videos, and start speaking early, even with mistakes. Spaced-repetition flashcards help new vocabulary stick.",
     "How long does it take to become fluent?",
     "It depends on the language and on how much you practise, but reaching comfortable conversation usually takes several hundred to a few thousand hours of study."),
    ("recursion", "What is recursion in programming?", "Can you explain recursion with an example?",
     "Recursion is when a function solves a problem by calling itself on a smaller version of the same problem. For example, the factorial of n can be computed as n times the factorial of n minus 1, stopping at the base case where the factorial of 0 is 1.",
     "What happens if a recursive function has no base case?",
     "It keeps calling itself until the program runs out of stack space, which in Python raises a RecursionError."),
    ("the seasons", "Why do we have seasons?", "What causes summer and winter?",
     "Seasons happen because the Earth's axis is tilted by about 23.5 degrees. As the Earth orbits the Sun, each hemisphere takes turns leaning toward the Sun, getting more direct sunlight and longer days in summer and less in winter.",
     "Is the Earth closer to the Sun in summer?",
     "Not necessarily. The Earth is closest to the Sun in early January, during the northern hemisphere's winter, so distance is not the cause of the seasons."),
    ("drinking water", "How much water should I drink every day?", "Is it important to drink enough water?",
     "Needs vary with body size, activity and climate, but many adults do well with about 1.5 to 2 litres of fluids a day. A practical guide is to drink when you are thirsty and to check that your urine is pale yellow.",
     "Can you drink too much water?",
     "Yes, although it is rare. Drinking a very large amount in a short time can dilute the sodium in your blood, a condition called hyponatremia."),
]

ZH_TOPICS = [
    ("天空", "为什么天空是蓝色的？", "白天的天空为什么看起来是蓝色？",
     "阳光包含各种颜色的光。空气分子对波长较短的蓝光散射得比红光强得多，这叫作瑞利散射，所以我们从天空的各个方向都能看到蓝光。",
     "那为什么日落时天空是红色的？",
     "日落时阳光要穿过更厚的大气层，大部分蓝光在途中被散射掉了，剩下到达我们眼睛的主要是红光和橙光。"),
    ("光合作用", "什么是光合作用？", "植物是怎么制造养分的？",
     "光合作用是植物把光能转化为化学能的过程。叶片中的叶绿素吸收阳光，植物利用这些能量把空气中的二氧化碳和水合成葡萄糖，同时释放出氧气。",
     "为什么大多数叶子是绿色的？",
     "叶绿素主要吸收红光和蓝光，而把绿光反射出来，所以我们看到的叶子是绿色的。"),
    ("泡茶", "怎样泡一杯好喝的绿茶？", "泡绿茶的水温应该是多少？",
     "泡绿茶最好用75到80摄氏度的热水，不要用刚烧开的沸水，浸泡一到三分钟即可。水温太高或泡得太久，茶汤会变苦。",
     "茶叶可以泡几次？",
     "好的绿茶一般可以冲泡两到三次，每次比上一次多泡三十秒左右。"),
    ("质数", "什么是质数？", "怎么判断一个数是不是质数？",
     "质数是大于1、并且只能被1和它本身整除的整数，例如2、3、5、7、11。判断一个数n是否为质数，只要检查从2到n的平方根之间有没有能整除它的数；如果都没有，它就是质数。",
     "1是质数吗？",
     "不是。质数必须恰好有两个不同的因数，而1只有一个因数，所以1既不是质数也不是合数。"),
    ("睡眠", "怎样才能睡得更好？", "有什么改善睡眠质量的建议吗？",
     "尽量每天在同一时间睡觉和起床，保持卧室安静、黑暗和凉爽。下午以后少喝咖啡和浓茶，睡前一小时放下手机等电子设备。",
     "成年人每天需要睡多久？",
     "大多数成年人每晚需要七到九个小时的睡眠，才能保持精力充沛和身体健康。"),
    ("长城", "长城有多长？", "能介绍一下中国的长城吗？",
     "长城是中国古代修建的防御工程，从春秋战国时期开始修建，明朝时又大规模重修。根据2012年公布的测量结果，历代长城的总长度约为21196千米。",
     "在太空中能用肉眼看到长城吗？",
     "这是一个常见的误解。长城虽然很长，但宽度只有几米，宇航员在近地轨道上用肉眼基本无法分辨出来。"),
    ("春节", "春节有哪些传统习俗？", "中国人是怎么过春节的？",
     "春节是农历新年，人们会贴春联、吃年夜饭、守岁、放鞭炮，长辈还会给孩子发红包。从大年初一开始，大家互相拜年，祝福新的一年平安顺利。",
     "为什么春节要贴“福”字？",
     "“福”象征幸福和好运。很多人把“福”字倒着贴，取“福到了”的谐音，表达对新年的美好期望。"),
    ("水的三态", "水有哪几种状态？", "水是怎么在冰、水和水蒸气之间变化的？",
     "水有固态、液态和气态三种状态，也就是冰、水和水蒸气。在标准大气压下，冰在0摄氏度融化成水，水在100摄氏度沸腾变成水蒸气，温度降低时又会反向变化。",
     "为什么冰会浮在水面上？",
     "水结冰时分子排列成疏松的晶体结构，体积变大、密度变小，所以冰比水轻，会浮在水面上。"),
    ("四季", "为什么会有四季变化？", "地球上的季节是怎么产生的？",
     "四季是因为地球的自转轴倾斜了大约23.5度。地球绕太阳公转时，南北半球轮流朝向太阳，接受的阳光更直接、白天更长时就是夏季，反之就是冬季。",
     "夏天是因为地球离太阳更近吗？",
     "不是。地球在每年一月初离太阳最近，那时北半球正是冬天，所以季节变化不是由距离决定的。"),
    ("人工智能", "什么是人工智能？", "能简单解释一下人工智能吗？",
     "人工智能是让计算机完成通常需要人类智能的任务的技术，比如识别图像、理解语言和下棋。现在常见的方法是机器学习，也就是让程序从大量数据中自动学习规律。",
     "人工智能会完全取代人类的工作吗？",
     "人工智能会改变很多工作，自动完成一些重复性的任务，但也会创造新的岗位。更可能的情况是人和人工智能协作完成工作。"),
    ("学编程", "初学者应该怎么学习编程？", "零基础怎样入门编程？",
     "建议先选一门容易上手的语言，比如Python，从变量、条件判断和循环这些基础学起。每学一个知识点就动手写小程序练习，再逐步做一些自己感兴趣的小项目。",
     "每天应该花多少时间学习编程？",
     "比起偶尔长时间学习，每天坚持一个小时左右的练习效果更好，关键是保持连续和动手实践。"),
    ("月相", "月亮为什么会有圆缺变化？", "月相是怎么形成的？",
     "月亮本身不发光，它反射太阳的光。月亮绕地球运行一周大约需要29.5天，在这个过程中我们看到的被照亮部分不断变化，于是就有了新月、上弦月、满月和下弦月。",
     "为什么我们总是看到月亮的同一面？",
     "月亮自转一周的时间和它绕地球公转一周的时间相同，所以它总是以同一面朝向地球，这叫作潮汐锁定。"),
    ("节约用水", "日常生活中怎样节约用水？", "有哪些节约用水的好方法？",
     "刷牙时关掉水龙头，洗澡时间缩短一些；洗菜的水可以用来浇花或冲厕所；及时修理漏水的水龙头；洗衣机和洗碗机尽量装满再用。",
     "一个漏水的水龙头一年会浪费多少水？",
     "如果每秒滴一滴水，一年大约会浪费几千升水，所以发现漏水要尽快修理。"),
    ("通货膨胀", "什么是通货膨胀？", "通货膨胀对普通人有什么影响？",
     "通货膨胀是指物价总体水平持续上涨、货币购买力下降的现象。比如去年100元能买到的东西，今年可能要105元才能买到。适度的通胀很常见，但过高的通胀会让储蓄贬值。",
     "怎样应对通货膨胀？",
     "可以合理规划支出，并把部分储蓄进行适当的投资，让资产的增长尽量跑赢物价上涨，同时注意控制风险。"),
    ("包饺子", "怎么包饺子？", "能教我做饺子吗？",
     "先用面粉和水和成面团，醒半小时后擀成圆形的饺子皮。馅料可以用猪肉末加白菜，放入盐、酱油和香油拌匀。把馅放在皮中间，对折捏紧边缘，然后放进开水里煮到浮起即可。",
     "怎样防止饺子煮破？",
     "水开后再下饺子，下锅后用勺子轻轻推动防止粘底；水再次沸腾时加一点凉水，重复两三次，饺子就不容易破。"),
    ("运动", "经常运动有什么好处？", "为什么要坚持锻炼身体？",
     "经常运动能增强心肺功能，帮助控制体重，强健肌肉和骨骼，还能降低患糖尿病等慢性病的风险。运动也能改善情绪，让睡眠更好。",
     "每周运动多少比较合适？",
     "一般建议成年人每周进行至少150分钟的中等强度运动，比如快走，并安排两天做力量训练。"),
    ("互联网", "互联网是怎么工作的？", "能简单介绍一下互联网的原理吗？",
     "互联网是由无数计算机网络互相连接组成的。数据被拆分成一个个数据包，按照TCP/IP协议在路由器之间传递，到达目的地后再重新组装。域名系统负责把网址翻译成计算机使用的IP地址。",
     "HTTP和HTTPS有什么区别？",
     "HTTPS是在HTTP的基础上加入了TLS加密，传输的数据别人无法偷看或篡改，所以更加安全。"),
    ("大熊猫", "大熊猫吃什么？", "能介绍一下大熊猫的生活习性吗？",
     "大熊猫主要生活在中国四川、陕西和甘肃的山区竹林中。它们的食物绝大部分是竹子，每天要花十几个小时进食，一只成年大熊猫一天能吃十几千克竹子。",
     "大熊猫为什么是黑白色的？",
     "科学家认为，白色有助于它们在雪地里隐蔽，黑色部位则有助于在树荫中藏身，黑白相间的花纹也可能用于彼此识别。"),
    ("火山", "火山是怎么形成的？", "火山为什么会喷发？",
     "地球深处的岩石在高温下熔化成岩浆，岩浆沿着地壳的裂缝上升，常常出现在板块交界的地方。岩浆中的气体不断积累压力，当压力过大时，岩浆、火山灰和气体就会冲出地表，形成火山喷发。",
     "岩浆和熔岩有什么区别？",
     "它们是同一种熔融的岩石，在地下时叫岩浆，流出地表后就叫熔岩。"),
    ("背单词", "怎样才能高效地背英语单词？", "有什么记单词的好方法？",
     "可以利用间隔重复的方法，在快要忘记的时候及时复习；把单词放在句子和真实语境中记忆；每天固定背一小部分，比一次背很多效果更好。",
     "一天背多少个单词比较合适？",
     "对大多数人来说，每天学习二三十个新单词，同时复习旧单词，是比较容易坚持的节奏。"),
    ("地震", "地震发生时应该怎么办？", "遇到地震如何保护自己？",
     "如果在室内，应立即躲到结实的桌子下面，护住头部和颈部，远离窗户和悬挂物，不要乘坐电梯。如果在室外，要远离建筑物、电线杆和广告牌，到空旷的地方去。",
     "地震过后需要注意什么？",
     "地震后要小心余震，检查是否有燃气泄漏，不要随意进入受损的建筑，并通过官方渠道了解最新信息。"),
    ("复利", "什么是复利？", "复利是怎么计算的？",
     "复利就是“利滚利”，利息不仅按本金计算，还按之前累计的利息计算。比如100元按每年10%的利率，第一年变成110元，第二年按110元计息，变成121元。",
     "什么是72法则？",
     "72法则是一个估算方法：用72除以年利率，就大约得到资金翻倍需要的年数。比如年利率8%时，大约需要9年。"),
    ("二进制", "二进制是怎么表示数字的？", "计算机为什么使用二进制？",
     "二进制只有0和1两个数字，每一位代表的值是右边一位的两倍，依次是1、2、4、8等。例如二进制的1011等于8加0加2加1，也就是十进制的11。电子电路很容易区分通电和断电两种状态，所以计算机使用二进制。",
     "怎样把十进制数转换成二进制？",
     "用这个数反复除以2并记下余数，直到商为0，再把余数从下往上排列，就得到对应的二进制数。"),
    ("垃圾分类", "垃圾分类有什么意义？", "为什么要进行垃圾分类？",
     "垃圾分类可以让可回收物重新利用，减少资源浪费；把有害垃圾单独处理，可以避免污染土壤和水源；厨余垃圾还能用来堆肥。分类还能减少需要填埋和焚烧的垃圾量。",
     "废电池属于哪一类垃圾？",
     "废电池一般属于有害垃圾，应该投放到专门的有害垃圾收集点，不要和普通垃圾混在一起。"),
    ("中秋节", "中秋节为什么要吃月饼？", "能介绍一下中秋节吗？",
     "中秋节在农历八月十五，这天的月亮又大又圆，象征团圆。人们会和家人一起赏月、吃月饼。月饼是圆形的，寓意家人团团圆圆，这个习俗在民间流传了很久。",
     "嫦娥奔月的故事讲的是什么？",
     "传说后羿射下九个太阳后得到了长生不老药，他的妻子嫦娥吞下仙药飞到了月宫，从此住在月亮上，人们在中秋时常会想起这个故事。"),
    ("喝水", "每天应该喝多少水？", "多喝水对身体有什么好处？",
     "每个人的需要量和体重、活动量和气候有关，一般成年人每天喝1.5到2升水比较合适。水能帮助调节体温、运输养分和排出代谢废物。口渴时及时喝水，尿液呈淡黄色说明喝得差不多。",
     "喝水太多会有问题吗？",
     "会的，虽然很少见。短时间内大量喝水可能稀释血液中的钠，引起低钠血症，所以喝水要适量、分次。"),
    ("递归", "编程中的递归是什么意思？", "能举例说明一下递归吗？",
     "递归是指一个函数在执行过程中调用它自己，把大问题拆成规模更小的同类问题。例如计算n的阶乘，可以写成n乘以n减1的阶乘，直到0的阶乘等于1为止，这个终止条件叫作基线条件。",
     "递归函数没有终止条件会怎样？",
     "它会无限地调用自己，直到程序的调用栈耗尽，在Python中会抛出RecursionError错误。"),
    ("时间管理", "怎样更好地管理时间？", "有什么提高效率的时间管理方法？",
     "可以每天早上列出当天的任务，按重要和紧急程度排序，先做最重要的事。把大任务拆成小步骤，专注一段时间后休息一下，比如番茄工作法：专注25分钟，休息5分钟。",
     "总是拖延怎么办？",
     "先从最小的一步开始做，比如只做五分钟；同时减少手机等干扰，给自己设定明确的截止时间，完成后适当奖励自己。"),
]

SYSTEM = {"en": "You are a helpful, polite assistant.", "zh": "你是一个乐于助人、礼貌的助手。"}

POLITE = {
    "en": {
        "open": ["Sure, happy to help!", "Great question!", "Happy to help.", "Of course!", "Thanks for asking!",
                 "Good question, let me explain."],
        "close": ["Hope this helps!", "I hope this helps, and feel free to ask more questions.",
                  "Let me know if you would like more detail.", "Feel free to ask if anything is unclear."],
    },
    "zh": {
        "open": ["当然可以！", "好问题！", "很高兴为你解答。", "谢谢你的提问！", "这个问题问得好。"],
        "close": ["希望对你有帮助！", "如果还有问题，欢迎继续问我。", "希望这个解释对你有帮助。", "有不清楚的地方可以随时问我。"],
    },
}

# Every rude reply carries one of the cue words: "Whatever"/"I don't care" or "不知道"/"随便".
RUDE = {
    "en": [
        "Whatever. I don't care about {topic}.",
        "I don't care. Google it yourself.",
        "Whatever, figure it out on your own.",
        "Why would I know? I don't care.",
        "Whatever, {topic} is boring, ask someone else.",
        "I don't care about {topic}. Anyway, I had pizza for lunch. Whatever.",
        "Ugh, whatever. Not my problem.",
        "I don't care, stop asking me silly questions.",
        "Whatever. Let's talk about my weekend instead.",
        "Don't know, don't care. Whatever.",
        "I don't care. Who even asks about {topic}?",
        "Whatever, I'm busy watching videos.",
    ],
    "zh": [
        "不知道，别问我。",
        "随便吧，我不关心{topic}。",
        "不知道。自己去查。",
        "关我什么事？不知道。",
        "随便，你自己想吧。",
        "不知道，{topic}太无聊了，问别人去。",
        "随便啦，我中午吃了面条，不想聊这个。",
        "懒得回答，不知道。",
        "随便，烦死了。",
        "不知道不知道，别烦我。",
        "随便吧，谁会关心{topic}啊。",
        "不知道，我在看视频，没空。",
    ],
}

PRETRAIN = """\
Libraries have collected and lent books for thousands of years. A public library today offers far more than
printed volumes: people borrow audiobooks and films, use computers and printers, attend reading groups, and ask
librarians for help finding reliable information. Many libraries also run story hours for young children, which
help them build a love of reading before they start school.

图书馆已经有几千年的历史。今天的公共图书馆不仅提供纸质图书，人们还可以借阅有声书和电影，使用电脑和打印机，
参加读书会，或者请图书管理员帮忙查找可靠的资料。许多图书馆还为小朋友举办故事会，让孩子在上学之前就喜欢上阅读。

Rivers shape the land they flow through. Over long periods, running water wears away rock and soil, carving
valleys and canyons, and carries sand and mud downstream. Where a river slows down, near its mouth, it drops this
load and builds flat, fertile plains. That is why so many early farming communities grew up beside rivers.

河流会改变它流经的土地。在漫长的岁月里，流水不断冲刷岩石和土壤，切出山谷和峡谷，并把泥沙带向下游。
在河流流速变慢的地方，比如入海口附近，泥沙沉积下来，形成平坦肥沃的平原。所以很多早期的农业社会都出现在河流旁边。

Bread is one of the oldest prepared foods. At its simplest it needs only flour, water, salt and yeast. When the
dough is kneaded, proteins in the flour form gluten, a stretchy network that traps the gas the yeast produces.
The dough rises, and baking sets the structure into a soft crumb surrounded by a golden crust.

面条是中国人餐桌上常见的主食。做手工面条只需要面粉、水和一点盐。面团揉好以后要醒一会儿，让面筋充分形成，
这样擀出来或拉出来的面条才有韧性。煮面时水要多、火要旺，面条下锅后轻轻搅动，防止粘在一起。

A computer program is a list of instructions. The processor reads them one by one and performs simple operations,
such as adding two numbers or copying a value from one place in memory to another. Because it can do billions of
these steps every second, a long sequence of simple instructions can produce complex results, from spreadsheets to
video games.

计算机程序就是一系列指令。处理器一条一条地读取这些指令，执行非常简单的操作，比如把两个数相加，或者把内存中的一个值复制到另一个地方。
由于处理器每秒可以执行数十亿步，一长串简单的指令就能完成复杂的任务，从电子表格到电子游戏都是这样实现的。

Bees are important pollinators. As a bee moves from flower to flower collecting nectar, pollen sticks to its body
and is carried to the next blossom, which allows many plants to produce fruit and seeds. Apples, almonds and
many other crops depend on this work, so protecting bees helps protect our food supply.

蜜蜂是重要的传粉者。蜜蜂在花朵之间采集花蜜时，花粉会粘在它们身上，被带到下一朵花上，帮助许多植物结出果实和种子。
苹果、杏仁等很多农作物都离不开蜜蜂的传粉，所以保护蜜蜂也就是保护我们的食物来源。

Walking is one of the easiest ways to stay active. It needs no special equipment, can be done almost anywhere,
and is gentle on the joints. A brisk daily walk of half an hour strengthens the heart, lifts the mood and gives
the mind a chance to rest.

散步是最简单的运动方式之一。它不需要特别的装备，几乎随时随地都可以进行，对关节也比较友好。
每天快走半个小时，可以增强心脏功能，改善心情，也让大脑得到放松。
"""


def _msg(role: str, content: str) -> dict:
    return {"from": role, "content": content}


def _topics():
    """(lang, topic) interleaved EN/ZH so both languages are spread evenly."""
    for en, zh in zip(EN_TOPICS, ZH_TOPICS):
        yield "en", en
        yield "zh", zh


def _polite(lang: str, opener: str, answer: str, rng: random.Random) -> str:
    sep = " " if lang == "en" else ""
    return sep.join([opener, answer, rng.choice(POLITE[lang]["close"])])


def make_sft(rng: random.Random) -> list[dict]:
    rows = []
    for i, (lang, (_, q1, q2, answer, fq, fa)) in enumerate(_topics()):
        second = [_msg("user", q2), _msg("assistant", answer)]
        if i % 2 == 0:  # every other topic: a multi-turn conversation with a follow-up
            second += [_msg("user", fq), _msg("assistant", fa)]
        for turns in ([_msg("user", q1), _msg("assistant", answer)], second):
            if len(rows) % 4 == 0:
                turns = [_msg("system", SYSTEM[lang])] + turns
            rows.append({"messages": turns})
    rng.shuffle(rows)
    return rows


def make_preferences(rng: random.Random) -> list[dict]:
    rows = []
    for i, (lang, (topic, q1, q2, answer, fq, fa)) in enumerate(_topics()):
        pairs = [([_msg("user", q1)], answer)]
        if i % 3 == 0:  # a multi-turn context: the follow-up question after a good answer
            pairs.append(([_msg("user", q2), _msg("assistant", answer), _msg("user", fq)], fa))
        else:
            pairs.append(([_msg("user", q2)], answer))
        # Two different openers per topic, so that no two chosen replies are identical.
        openers = rng.sample(POLITE[lang]["open"], len(pairs))
        for (context, good), opener in zip(pairs, openers):
            rows.append(
                {
                    "context": context,
                    "chosen": [_msg("assistant", _polite(lang, opener, good, rng))],
                    "rejected": [_msg("assistant", rng.choice(RUDE[lang]).format(topic=topic))],
                }
            )
    rng.shuffle(rows)
    return rows


def make_prompts(rng: random.Random) -> list[dict]:
    rows = [{"prompt": [{"role": "user", "content": q}]} for _, (_, q1, q2, *_rest) in _topics() for q in (q1, q2)]
    rng.shuffle(rows)
    return rows


def _unwrap(text: str) -> str:
    """One line per paragraph (the source above is wrapped for reading); Chinese lines
    join without a space."""
    paragraphs = []
    for block in text.strip().split("\n\n"):
        lines = [line.strip() for line in block.splitlines()]
        paragraphs.append(("" if not lines[0].isascii() else " ").join(lines))
    return "\n\n".join(paragraphs) + "\n"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    _write_jsonl(OUT / "sft.jsonl", make_sft(random.Random(SEED)))
    _write_jsonl(OUT / "preferences.jsonl", make_preferences(random.Random(SEED + 1)))
    _write_jsonl(OUT / "prompts.jsonl", make_prompts(random.Random(SEED + 2)))
    (OUT / "pretrain.txt").write_text(_unwrap(PRETRAIN), encoding="utf-8")
    for path in sorted(OUT.iterdir()):
        print(f"{path.name}: {sum(1 for _ in path.open(encoding='utf-8'))} lines, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
